//! Native host.

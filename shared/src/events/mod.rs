//! Events out: every fact Kizuna records, as an event for the tools that
//! act on it (mail and LINE tools, Shopify Flow, a shop's own system).
//! This module owns the closed list of topics; the outbox (written in the
//! same transaction as the fact) and the webhook endpoints that receive
//! events build on it.

pub mod endpoints;
pub mod outbox;

/// Every topic an event can have, and so every topic a webhook endpoint
/// may subscribe to. `points.expiring`, `segment.joined` and
/// `segment.left` are computed by the scheduler, not on a write path.
pub const TOPICS: &[&str] = &[
    "contact.created",
    "contact.updated",
    "contact.erased",
    "consent.granted",
    "consent.withdrawn",
    "form.submitted",
    "order.paid",
    "order.refunded",
    "order.cancelled",
    "points.earned",
    "points.redeemed",
    "points.adjusted",
    "points.reversed",
    "points.expired",
    "points.expiring",
    "segment.joined",
    "segment.left",
];

/// Whether `name` is one of [`TOPICS`].
pub fn is_topic(name: &str) -> bool {
    TOPICS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_unique_and_dotted() {
        for (index, topic) in TOPICS.iter().enumerate() {
            assert!(!TOPICS[..index].contains(topic), "{topic} twice");
            assert!(topic.split_once('.').is_some(), "{topic}");
        }
        assert!(is_topic("order.paid"));
        assert!(!is_topic("order.*"));
    }
}

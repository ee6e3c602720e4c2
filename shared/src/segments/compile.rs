//! A parsed definition to one parameterised SQL condition over `contacts
//! c`. Column names and SQL come only from this file; every value from a
//! definition becomes a `?N` parameter. Relative dates are evaluated in
//! the shop's time zone, from the start of today.

use super::definition::{Builtin, Condition, Field, Node, Op, Operand};
use crate::ports::Value;
use crate::shop_time;
use crate::timestamp;
use time::{Duration, OffsetDateTime, UtcOffset};

/// Contact `c`'s `column` in the current RFM computation.
fn rfm_score(column: &str) -> String {
    format!(
        "(SELECT r.{column} FROM rfm_scores r WHERE r.computed_at = {} AND r.contact_id = c.id)",
        super::analytics::CURRENT_RFM_SQL
    )
}

/// What conditions need besides the definition.
#[derive(Debug, Clone, Copy)]
pub struct Env {
    pub now: OffsetDateTime,
    /// The 12-month net spend (minor units) from which a customer is VIP.
    pub vip_threshold: i64,
}

/// A compiled condition: SQL over `contacts c` and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub sql: String,
    pub params: Vec<Value>,
}

/// Compiles `node` with relative dates in the default zone
/// ([`shop_time::DEFAULT`]); with `email_purpose`, only contacts with an
/// email and a current email consent (the latest record a grant) can
/// match. Requests use [`compile_in`] with the configured zone.
pub fn compile(node: &Node, env: &Env, email_purpose: bool) -> Compiled {
    compile_in(node, env, email_purpose, shop_time::DEFAULT)
}

/// Like [`compile`], with relative dates counted in the time zone `offset`.
pub fn compile_in(node: &Node, env: &Env, email_purpose: bool, offset: UtcOffset) -> Compiled {
    let mut builder = Builder {
        params: Vec::new(),
        env: *env,
        offset,
    };
    let mut sql = format!("c.erased_at IS NULL AND ({})", builder.node(node));
    if email_purpose {
        sql.push_str(&format!(
            " AND c.email IS NOT NULL AND {} = 'granted'",
            LATEST_EMAIL_CONSENT
        ));
    }
    Compiled {
        sql,
        params: builder.params,
    }
}

pub(super) const LATEST_EMAIL_CONSENT: &str = "(SELECT k.status FROM consents k WHERE k.contact_id = c.id AND k.channel = 'email' \
     ORDER BY k.recorded_at DESC, k.id DESC LIMIT 1)";

/// An order that counts (paid, neither cancelled nor fully refunded),
/// as `purchases::ingest::refresh_contact` counts it.
const COUNTED: &str = "o.paid = 1 AND o.cancelled = 0 AND o.status <> 'refunded'";

const COUNTED_ORDER: &str =
    "o.contact_id = c.id AND o.paid = 1 AND o.cancelled = 0 AND o.status <> 'refunded'";

struct Builder {
    params: Vec<Value>,
    env: Env,
    /// The shop's time zone, for "today".
    offset: UtcOffset,
}

impl Builder {
    /// Adds a parameter and returns its placeholder.
    fn p(&mut self, value: impl Into<Value>) -> String {
        self.params.push(value.into());
        format!("?{}", self.params.len())
    }

    fn t(&mut self, at: OffsetDateTime) -> String {
        self.p(timestamp::format(at))
    }

    /// The start of the shop-local day `days` days ago, in UTC (clamped
    /// like [`add_days`]).
    fn days_ago(&self, days: i64) -> OffsetDateTime {
        let today = shop_time::start_of_day(self.env.now, self.offset).unwrap_or(self.env.now);
        add_days(today, days.checked_neg().unwrap_or(i64::MAX))
    }

    fn node(&mut self, node: &Node) -> String {
        match node {
            Node::All(nodes) => self.group(nodes, " AND "),
            Node::Any(nodes) => self.group(nodes, " OR "),
            // SQL's NOT of an unknown (a missing value) is still unknown;
            // COALESCE makes `not` the exact complement of its condition.
            Node::Not(inner) => format!("NOT COALESCE(({}), 0)", self.node(inner)),
            Node::Condition(condition) => self.condition(condition),
            Node::Builtin(builtin) => self.builtin(*builtin),
        }
    }

    fn group(&mut self, nodes: &[Node], joiner: &str) -> String {
        let parts: Vec<String> = nodes
            .iter()
            .map(|n| format!("({})", self.node(n)))
            .collect();
        parts.join(joiner)
    }

    fn builtin(&mut self, builtin: Builtin) -> String {
        match builtin {
            Builtin::Prospects => "c.order_count = 0".to_owned(),
            Builtin::NewCustomers => format!(
                "c.order_count >= 1 AND c.first_order_at >= {}",
                self.t(self.days_ago(30))
            ),
            Builtin::Repeat => "c.order_count >= 2".to_owned(),
            Builtin::Vip => {
                let since = self.t(add_days(self.env.now, -365));
                let threshold = self.p(self.env.vip_threshold.max(1));
                format!(
                    "c.order_count >= 1 AND (SELECT COALESCE(SUM(MAX(o.total_minor - o.refunded_minor, 0)), 0) FROM orders o \
                     WHERE {COUNTED_ORDER} AND o.placed_at >= {since}) >= {threshold}"
                )
            }
            Builtin::AtRisk => {
                format!("{} = 'high'", rfm_score("churn_risk"))
            }
            Builtin::Dormant => {
                format!("c.last_order_at < {}", self.t(add_days(self.env.now, -365)))
            }
            Builtin::PointsExpiring => self.points_expiring(30),
        }
    }

    fn points_expiring(&mut self, days: i64) -> String {
        let now = self.t(self.env.now);
        let until = self.t(add_days(self.env.now, days));
        format!(
            "EXISTS (SELECT 1 FROM points_lots p WHERE p.contact_id = c.id AND p.remaining > 0 \
             AND p.expires_at > {now} AND p.expires_at <= {until})"
        )
    }

    fn condition(&mut self, condition: &Condition) -> String {
        let Condition { field, op, value } = condition;
        match field {
            Field::EmailDomain => self.scalar("c.email_domain", *op, value),
            Field::Source => self.scalar("c.source", *op, value),
            Field::UtmSource => self.scalar("c.utm_source", *op, value),
            Field::UtmCampaign => self.scalar("c.utm_campaign", *op, value),
            Field::LifecycleStage => self.scalar("c.lifecycle_stage", *op, value),
            Field::Attribute(key) => {
                // The path is a parameter too: `$."<key>"` with quotes escaped.
                let path = self.p(format!(
                    "$.\"{}\"",
                    key.replace('\\', "\\\\").replace('"', "\\\"")
                ));
                self.scalar(&format!("json_extract(c.attributes, {path})"), *op, value)
            }
            Field::HasEmail => bool_sql("c.email IS NOT NULL", value),
            Field::HasPhone => bool_sql("c.phone IS NOT NULL", value),
            Field::EmailConsent => bool_sql(&format!("{LATEST_EMAIL_CONSENT} IS 'granted'"), value),
            Field::CreatedAt => self.time("c.created_at", *op, value),
            Field::FirstOrderAt => self.time("c.first_order_at", *op, value),
            Field::LastOrderAt => self.time("c.last_order_at", *op, value),
            Field::BirthdayMonth => {
                self.scalar("CAST(substr(c.birthday, 6, 2) AS INTEGER)", *op, value)
            }
            Field::OrderCount => self.scalar("c.order_count", *op, value),
            Field::TotalSpent => self.scalar("c.total_spent_minor", *op, value),
            Field::AverageOrderValue => self.scalar("c.average_order_value_minor", *op, value),
            Field::DaysSinceLastOrder => self.days_since(*op, value),
            Field::PointsAvailable => {
                let now = self.t(self.env.now);
                let column = format!(
                    "(SELECT COALESCE(SUM(p.remaining), 0) FROM points_lots p WHERE p.contact_id = c.id AND p.remaining > 0 \
                     AND p.available_at <= {now} AND (p.expires_at IS NULL OR p.expires_at > {now}))"
                );
                self.scalar(&column, *op, value)
            }
            Field::PointsExpiringWithinDays => match value {
                Operand::Days(days) => self.points_expiring(*days),
                _ => "0".to_owned(),
            },
            Field::RfmRecency => self.scalar(&rfm_score("recency"), *op, value),
            Field::RfmFrequency => self.scalar(&rfm_score("frequency"), *op, value),
            Field::RfmMonetary => self.scalar(&rfm_score("monetary"), *op, value),
            Field::ChurnRisk => self.scalar(
                &format!("COALESCE({}, 'none')", rfm_score("churn_risk")),
                *op,
                value,
            ),
            Field::Tags => self.tags(*op, value),
            Field::Purchased => self.purchased(*op, value),
            Field::Spent => self.spent(*op, value),
            Field::SubmittedForm => self.submitted_form(*op, value),
        }
    }

    /// eq / neq / in / not_in / comparisons / between / exists over one
    /// SQL expression. A missing value (NULL) matches neither `eq` nor
    /// `neq`: "not equal to x" means "has a value, and it is not x".
    fn scalar(&mut self, column: &str, op: Op, value: &Operand) -> String {
        match (op, value) {
            (Op::Exists, Operand::Bool(true)) => format!("{column} IS NOT NULL"),
            (Op::Exists, _) => format!("{column} IS NULL"),
            (Op::Between, Operand::IntRange(a, b)) => {
                let (a, b) = (self.p(*a), self.p(*b));
                format!("{column} BETWEEN {a} AND {b}")
            }
            (Op::In | Op::NotIn, Operand::Texts(items)) => {
                self.list(column, op, items.iter().cloned().map(Value::from).collect())
            }
            (Op::In | Op::NotIn, Operand::Ints(items)) => {
                self.list(column, op, items.iter().copied().map(Value::from).collect())
            }
            (_, Operand::Text(v)) => self.compare(column, op, Value::from(v.as_str())),
            (_, Operand::Int(v)) => self.compare(column, op, Value::from(*v)),
            _ => "0".to_owned(),
        }
    }

    fn compare(&mut self, column: &str, op: Op, value: Value) -> String {
        let sign = match op {
            Op::Eq => "=",
            Op::Neq => "<>",
            Op::Gt => ">",
            Op::Gte => ">=",
            Op::Lt => "<",
            Op::Lte => "<=",
            _ => return "0".to_owned(),
        };
        format!("{column} {sign} {}", self.p(value))
    }

    fn list(&mut self, column: &str, op: Op, items: Vec<Value>) -> String {
        let placeholders: Vec<String> = items.into_iter().map(|v| self.p(v)).collect();
        let list = placeholders.join(", ");
        if op == Op::In {
            format!("{column} IN ({list})")
        } else {
            format!("{column} IS NOT NULL AND {column} NOT IN ({list})")
        }
    }

    fn time(&mut self, column: &str, op: Op, value: &Operand) -> String {
        match (op, value) {
            (Op::Exists, Operand::Bool(true)) => format!("{column} IS NOT NULL"),
            (Op::Exists, _) => format!("{column} IS NULL"),
            // Stored times have whole microseconds and parameters are
            // formatted the same way (truncated), so bounds that must not
            // lose a finer fraction round up instead.
            (Op::Before, Operand::Time(t)) => format!("{column} < {}", self.t(ceil_micros(*t))),
            (Op::After, Operand::Time(t)) => format!("{column} > {}", self.t(*t)),
            (Op::Between, Operand::TimeRange(a, b)) => {
                let (a, b) = (self.t(ceil_micros(*a)), self.t(*b));
                format!("{column} >= {a} AND {column} <= {b}")
            }
            (Op::WithinLastDays, Operand::Days(days)) => {
                format!("{column} >= {}", self.t(self.days_ago(*days)))
            }
            _ => "0".to_owned(),
        }
    }

    /// `days_since_last_order` as bounds on the indexed `last_order_at`,
    /// counted in calendar days of shop time: an order placed today is 0
    /// days ago, yesterday's 1, whatever the hour. N days ago means the
    /// order falls in [start of day N ago, start of day N−1 ago).
    fn days_since(&mut self, op: Op, value: &Operand) -> String {
        let column = "c.last_order_at";
        let exactly = |b: &mut Builder, n: i64| {
            let (lower, upper) = (b.t(b.days_ago(n)), b.t(b.days_ago(n - 1)));
            format!("({column} >= {lower} AND {column} < {upper})")
        };
        match (op, value) {
            (Op::Exists, Operand::Bool(true)) => format!("{column} IS NOT NULL"),
            (Op::Exists, _) => format!("{column} IS NULL"),
            (Op::Eq, Operand::Int(n)) => exactly(self, *n),
            (Op::Neq, Operand::Int(n)) => {
                format!("{column} IS NOT NULL AND NOT {}", exactly(self, *n))
            }
            (Op::Gt, Operand::Int(n)) => format!("{column} < {}", self.t(self.days_ago(*n))),
            (Op::Gte, Operand::Int(n)) => format!("{column} < {}", self.t(self.days_ago(n - 1))),
            (Op::Lt, Operand::Int(n)) => format!("{column} >= {}", self.t(self.days_ago(n - 1))),
            (Op::Lte, Operand::Int(n)) => format!("{column} >= {}", self.t(self.days_ago(*n))),
            (Op::Between, Operand::IntRange(a, b)) => {
                let (lower, upper) = (self.t(self.days_ago(*b)), self.t(self.days_ago(a - 1)));
                format!("({column} >= {lower} AND {column} < {upper})")
            }
            (Op::In, Operand::Ints(items)) => {
                let parts: Vec<String> = items.iter().map(|n| exactly(self, *n)).collect();
                format!("({})", parts.join(" OR "))
            }
            (Op::NotIn, Operand::Ints(items)) => {
                let parts: Vec<String> = items.iter().map(|n| exactly(self, *n)).collect();
                format!("{column} IS NOT NULL AND NOT ({})", parts.join(" OR "))
            }
            _ => "0".to_owned(),
        }
    }

    fn tags(&mut self, op: Op, value: &Operand) -> String {
        let has = |condition: &str| {
            format!("EXISTS (SELECT 1 FROM contact_tags t WHERE t.contact_id = c.id{condition})")
        };
        match (op, value) {
            (Op::Exists, Operand::Bool(true)) => has(""),
            (Op::Exists, _) => format!("NOT {}", has("")),
            // `c.id IN (…tag index…)` rather than a correlated EXISTS, so
            // the tag index can drive the query when it is the narrowest
            // condition (contact_id is never NULL, so NOT IN is exact).
            (Op::Contains, Operand::Text(tag)) => format!(
                "c.id IN (SELECT t.contact_id FROM contact_tags t WHERE t.tag = {})",
                self.p(tag.as_str())
            ),
            (Op::In | Op::NotIn, Operand::Texts(tags)) => {
                let placeholders: Vec<String> = tags.iter().map(|t| self.p(t.as_str())).collect();
                let list = format!(
                    "(SELECT t.contact_id FROM contact_tags t WHERE t.tag IN ({}))",
                    placeholders.join(", ")
                );
                if op == Op::In {
                    format!("c.id IN {list}")
                } else {
                    format!("c.id NOT IN {list}")
                }
            }
            _ => "0".to_owned(),
        }
    }

    /// The line condition of an SKU (exact: codes are case-sensitive) or
    /// a category (`COLLATE NOCASE`: shops write "Tea", "tea" and "TEA"
    /// for one category; Japanese has no case, and full-width Latin is
    /// not folded). Each is served by its own index on `order_lines`
    /// (`order_lines_sku_idx`, `order_lines_category_nocase_idx`).
    fn item(&mut self, sku: Option<&str>, category: Option<&str>) -> Option<String> {
        match (sku, category) {
            (Some(sku), _) => Some(format!("l.sku = {}", self.p(sku))),
            (None, Some(category)) => {
                Some(format!("l.category = {} COLLATE NOCASE", self.p(category)))
            }
            (None, None) => None,
        }
    }

    fn since(&mut self, within_days: Option<i64>) -> String {
        match within_days {
            Some(days) => format!(" AND o.placed_at >= {}", self.t(self.days_ago(days))),
            None => String::new(),
        }
    }

    /// `c.id IN (buyers)` rather than a correlated EXISTS: the buyers of
    /// an item are found once, from the item's index on `order_lines`
    /// (cost: the lines of that SKU or category, each joined to its order
    /// by primary key), and each contact is then one probe into that set;
    /// a correlated EXISTS would read every contact's orders and lines.
    /// `o.contact_id IS NOT NULL` keeps `NOT IN` exact.
    fn purchased(&mut self, op: Op, value: &Operand) -> String {
        let Operand::Item {
            sku,
            category,
            within_days,
        } = value
        else {
            return "0".to_owned();
        };
        let Some(item) = self.item(sku.as_deref(), category.as_deref()) else {
            return "0".to_owned();
        };
        let window = self.since(*within_days);
        let buyers = format!(
            "(SELECT o.contact_id FROM order_lines l JOIN orders o ON o.id = l.order_id \
             WHERE {item} AND o.contact_id IS NOT NULL AND {COUNTED}{window})"
        );
        if op == Op::Neq {
            format!("c.id NOT IN {buyers}")
        } else {
            format!("c.id IN {buyers}")
        }
    }

    /// `spent`: net spend (order totals less refunds, as `total_spent`)
    /// of counted orders in the window; on an SKU or a category, the sum
    /// of its lines' totals (after line discounts) in counted orders.
    /// Refunds are recorded per order, not per line, so a partial refund
    /// does not lower a category's spend; a full refund removes the
    /// order. A contact without such orders spent 0. Correlated per
    /// contact through `orders_contact_idx` (contact, placed_at), so the
    /// window bounds an index range.
    fn spent(&mut self, op: Op, value: &Operand) -> String {
        let Operand::Spend {
            amount,
            sku,
            category,
            within_days,
        } = value
        else {
            return "0".to_owned();
        };
        let item = self.item(sku.as_deref(), category.as_deref());
        let window = self.since(*within_days);
        let expression = match item {
            Some(item) => format!(
                "(SELECT COALESCE(SUM(l.line_total_minor), 0) FROM orders o \
                 JOIN order_lines l ON l.order_id = o.id WHERE {COUNTED_ORDER} AND {item}{window})"
            ),
            None => format!(
                "(SELECT COALESCE(SUM(MAX(o.total_minor - o.refunded_minor, 0)), 0) FROM orders o \
                 WHERE {COUNTED_ORDER}{window})"
            ),
        };
        self.scalar(&expression, op, amount)
    }

    fn submitted_form(&mut self, op: Op, value: &Operand) -> String {
        let Operand::Form {
            form_id,
            within_days,
        } = value
        else {
            return "0".to_owned();
        };
        let form = self.p(form_id.as_str());
        let window = match within_days {
            Some(days) => format!(" AND i.occurred_at >= {}", self.t(self.days_ago(*days))),
            None => String::new(),
        };
        let exists = format!(
            "EXISTS (SELECT 1 FROM interactions i WHERE i.kind = 'form_submitted' AND i.contact_id = c.id \
             AND json_extract(i.data, '$.form_id') = {form}{window})"
        );
        if op == Op::Neq {
            format!("NOT {exists}")
        } else {
            exists
        }
    }
}

/// `at` moved by `days` whole days (negative: back), in UTC and clamped
/// to [`timestamp::MIN`]..=[`timestamp::MAX`]. Every stored time lies in
/// that range, so a bound beyond it compares exactly like the range's
/// end; nothing here can overflow or panic, whatever `days` is.
fn add_days(at: OffsetDateTime, days: i64) -> OffsetDateTime {
    days.checked_mul(86_400)
        .and_then(|seconds| at.checked_add(Duration::seconds(seconds)))
        .and_then(|t| t.checked_to_offset(UtcOffset::UTC))
        .map(|t| t.clamp(timestamp::MIN, timestamp::MAX))
        .unwrap_or(if days < 0 {
            timestamp::MIN
        } else {
            timestamp::MAX
        })
}

/// `at` rounded up to a whole microsecond. Parsed times are at most
/// [`timestamp::MAX`], a whole microsecond, so the result stays in range;
/// beyond it, the result is [`timestamp::MAX`] rather than a panic.
fn ceil_micros(at: OffsetDateTime) -> OffsetDateTime {
    match at.nanosecond() % 1000 {
        0 => at,
        extra => at
            .checked_add(Duration::nanoseconds(i64::from(1000 - extra)))
            .unwrap_or(timestamp::MAX),
    }
}

fn bool_sql(expression: &str, value: &Operand) -> String {
    match value {
        Operand::Bool(true) => expression.to_owned(),
        _ => format!("NOT ({expression})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segments::definition::parse;
    use serde_json::json;

    #[test]
    fn values_only_ever_travel_as_parameters() {
        let evil = "x' OR 1=1; DROP TABLE contacts; --";
        let node = parse(&json!({"any": [
            {"field": "source", "op": "eq", "value": evil},
            {"field": "tags", "op": "in", "value": [evil]},
            {"field": "attributes.a\"b", "op": "eq", "value": evil},
            {"field": "purchased", "op": "eq", "value": {"sku": evil}}
        ]}))
        .unwrap();
        let env = Env {
            now: time::macros::datetime!(2026-11-22 03:00 UTC),
            vip_threshold: 0,
        };
        let compiled = compile(&node, &env, true);
        assert!(!compiled.sql.contains("DROP"), "{}", compiled.sql);
        assert!(!compiled.sql.contains("OR 1=1"), "{}", compiled.sql);
        assert!(
            compiled
                .params
                .iter()
                .filter(|p| **p == Value::from(evil))
                .count()
                == 4
        );
    }

    #[test]
    fn extreme_dates_offsets_and_day_counts_are_refused_or_compile_without_panicking() {
        use crate::error::ApiError;
        use crate::segments::definition::parse_in;
        let values = [
            json!("-9999-01-01"),
            json!("0000-01-01"),
            json!("0001-01-01"),
            json!("0001-01-02"),
            json!("9999-12-30"),
            json!("9999-12-31"),
            json!("0001-01-01T00:00:00Z"),
            json!("0001-01-01T00:00:00+23:59"),
            json!("9999-12-31T23:59:59.999999Z"),
            json!("9999-12-31T23:59:59.999999999Z"),
            json!("9999-12-31T23:59:59-23:59"),
        ];
        let mut definitions = Vec::new();
        for value in &values {
            for op in ["before", "after"] {
                definitions.push(json!({"field": "created_at", "op": op, "value": value}));
            }
            for other in [json!("0001-01-01T00:00:00Z"), json!("9999-12-31")] {
                let range = json!([other.clone(), value.clone()]);
                definitions
                    .push(json!({"field": "last_order_at", "op": "between", "value": range}));
                let range = json!([value.clone(), other]);
                definitions
                    .push(json!({"field": "last_order_at", "op": "between", "value": range}));
            }
        }
        for days in [
            i64::MIN,
            -1,
            0,
            1,
            36_500,
            36_501,
            1_000_000_000_000,
            i64::MAX,
        ] {
            definitions
                .push(json!({"field": "created_at", "op": "within_last_days", "value": days}));
            definitions.push(json!({"field": "days_since_last_order", "op": "gte", "value": days}));
            definitions
                .push(json!({"field": "points_expiring_within_days", "op": "lte", "value": days}));
            definitions.push(
                json!({"field": "purchased", "op": "eq", "value": {"sku": "A", "within_days": days}}),
            );
            definitions.push(json!({"field": "spent", "op": "gte",
                "value": {"amount": 1, "category": "A", "within_days": days}}));
        }
        let offsets = [
            UtcOffset::UTC,
            shop_time::DEFAULT,
            UtcOffset::from_hms(14, 0, 0).unwrap(),
            UtcOffset::from_hms(-12, 0, 0).unwrap(),
            UtcOffset::from_hms(25, 59, 59).unwrap(),
            UtcOffset::from_hms(-25, -59, -59).unwrap(),
        ];
        let nows = [
            time::macros::datetime!(2026-11-22 03:00 UTC),
            timestamp::MIN,
            timestamp::MAX,
        ];
        for offset in offsets {
            for definition in &definitions {
                match parse_in(definition, offset) {
                    Ok(node) => {
                        for now in nows {
                            let env = Env {
                                now,
                                vip_threshold: i64::MAX,
                            };
                            let compiled = compile_in(&node, &env, false, offset);
                            for param in &compiled.params {
                                if let Value::Text(text) = param {
                                    assert!(
                                        !text.starts_with('-') && !text.starts_with("0000"),
                                        "{definition} at {offset}: {text}"
                                    );
                                }
                            }
                        }
                    }
                    Err(ApiError::Validation(errors)) => {
                        assert_eq!(errors[0].field, "/value", "{definition} at {offset}")
                    }
                    Err(other) => panic!("{definition} at {offset}: {other:?}"),
                }
            }
        }
        assert_eq!(add_days(timestamp::MAX, 1), timestamp::MAX);
        assert_eq!(add_days(timestamp::MIN, -1), timestamp::MIN);
        assert_eq!(add_days(timestamp::MIN, i64::MAX), timestamp::MAX);
        assert_eq!(add_days(timestamp::MAX, i64::MIN), timestamp::MIN);
    }

    #[test]
    fn a_built_in_counts_as_the_predicates_it_compiles_to() {
        use crate::segments::definition::Builtin;
        let env = Env {
            now: time::macros::datetime!(2026-11-22 03:00 UTC),
            vip_threshold: 100_000,
        };
        for name in Builtin::NAMES {
            let builtin = Builtin::parse(name).unwrap();
            let sql = compile(&Node::Builtin(builtin), &env, false).sql;
            let inner = sql
                .strip_prefix("c.erased_at IS NULL AND (")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap();
            // Predicates joined by AND outside any parentheses.
            let (mut depth, mut predicates) = (0, 1);
            for (i, c) in inner.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ' ' if depth == 0 && inner[i..].starts_with(" AND ") => predicates += 1,
                    _ => {}
                }
            }
            assert_eq!(builtin.conditions(), predicates, "{name}: {inner}");
        }
    }
}

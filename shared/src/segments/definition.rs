//! The segment language: a JSON tree of `{"all": [...]}`, `{"any": [...]}`,
//! `{"not": {...}}`, conditions `{"field", "op", "value"}` and built-in
//! segments by name (`{"segment": "vip"}`). Parsing checks every field,
//! operator and value against a closed whitelist, bounds depth and size,
//! and names the offending node with a JSON pointer.

use crate::error::{ApiError, FieldError};
use crate::timestamp;
use serde_json::Value as Json;
use time::OffsetDateTime;

pub const MAX_DEPTH: usize = 6;
pub const MAX_CONDITIONS: usize = 100;
const MAX_LIST: usize = 100;
const MAX_TEXT: usize = 200;
const MAX_DAYS: i64 = 36_500;

/// What a field holds, which decides its operators and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Bool,
    Enum(&'static [&'static str]),
    Int { min: i64, max: i64 },
    Time,
    Tags,
    Purchased,
    Spent,
    SubmittedForm,
    ExpiringDays,
}

/// Every field a definition may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    EmailDomain,
    HasEmail,
    HasPhone,
    LifecycleStage,
    Source,
    UtmSource,
    UtmCampaign,
    CreatedAt,
    BirthdayMonth,
    Tags,
    Attribute(String),
    EmailConsent,
    OrderCount,
    TotalSpent,
    AverageOrderValue,
    FirstOrderAt,
    LastOrderAt,
    DaysSinceLastOrder,
    Purchased,
    Spent,
    SubmittedForm,
    PointsAvailable,
    PointsExpiringWithinDays,
    RfmRecency,
    RfmFrequency,
    RfmMonetary,
    ChurnRisk,
}

/// The largest amount (minor units) a money condition compares with.
const MONEY_MAX: i64 = 1_000_000_000_000_000;
const MONEY: FieldKind = FieldKind::Int {
    min: 0,
    max: MONEY_MAX,
};
const COUNT: FieldKind = FieldKind::Int {
    min: 0,
    max: 1_000_000_000,
};
const SCORE: FieldKind = FieldKind::Int { min: 1, max: 5 };

impl Field {
    pub const NAMES: &'static [&'static str] = &[
        "email_domain",
        "has_email",
        "has_phone",
        "lifecycle_stage",
        "source",
        "utm_source",
        "utm_campaign",
        "created_at",
        "birthday_month",
        "tags",
        "attributes.<key>",
        "email_consent",
        "order_count",
        "total_spent",
        "average_order_value",
        "first_order_at",
        "last_order_at",
        "days_since_last_order",
        "purchased",
        "spent",
        "submitted_form",
        "points_available",
        "points_expiring_within_days",
        "rfm.recency",
        "rfm.frequency",
        "rfm.monetary",
        "churn_risk",
    ];

    pub fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "email_domain" => Field::EmailDomain,
            "has_email" => Field::HasEmail,
            "has_phone" => Field::HasPhone,
            "lifecycle_stage" => Field::LifecycleStage,
            "source" => Field::Source,
            "utm_source" => Field::UtmSource,
            "utm_campaign" => Field::UtmCampaign,
            "created_at" => Field::CreatedAt,
            "birthday_month" => Field::BirthdayMonth,
            "tags" => Field::Tags,
            "email_consent" => Field::EmailConsent,
            "order_count" => Field::OrderCount,
            "total_spent" => Field::TotalSpent,
            "average_order_value" => Field::AverageOrderValue,
            "first_order_at" => Field::FirstOrderAt,
            "last_order_at" => Field::LastOrderAt,
            "days_since_last_order" => Field::DaysSinceLastOrder,
            "purchased" => Field::Purchased,
            "spent" => Field::Spent,
            "submitted_form" => Field::SubmittedForm,
            "points_available" => Field::PointsAvailable,
            "points_expiring_within_days" => Field::PointsExpiringWithinDays,
            "rfm.recency" => Field::RfmRecency,
            "rfm.frequency" => Field::RfmFrequency,
            "rfm.monetary" => Field::RfmMonetary,
            "churn_risk" => Field::ChurnRisk,
            other => {
                let key = other.strip_prefix("attributes.")?;
                let valid = !key.is_empty()
                    && key.chars().count() <= crate::profile::MAX_ATTRIBUTE_KEY_CHARS
                    && !crate::text::has_control_chars(key);
                return valid.then(|| Field::Attribute(key.to_owned()));
            }
        })
    }

    pub fn kind(&self) -> FieldKind {
        match self {
            Field::EmailDomain
            | Field::Source
            | Field::UtmSource
            | Field::UtmCampaign
            | Field::Attribute(_) => FieldKind::Text,
            Field::HasEmail | Field::HasPhone | Field::EmailConsent => FieldKind::Bool,
            Field::LifecycleStage => FieldKind::Enum(&["lead", "customer", "repeat"]),
            Field::ChurnRisk => FieldKind::Enum(&["none", "low", "medium", "high"]),
            Field::CreatedAt | Field::FirstOrderAt | Field::LastOrderAt => FieldKind::Time,
            Field::BirthdayMonth => FieldKind::Int { min: 1, max: 12 },
            Field::Tags => FieldKind::Tags,
            Field::OrderCount | Field::PointsAvailable => COUNT,
            Field::DaysSinceLastOrder => FieldKind::Int {
                min: 0,
                max: MAX_DAYS,
            },
            Field::TotalSpent | Field::AverageOrderValue => MONEY,
            Field::Purchased => FieldKind::Purchased,
            Field::Spent => FieldKind::Spent,
            Field::SubmittedForm => FieldKind::SubmittedForm,
            Field::PointsExpiringWithinDays => FieldKind::ExpiringDays,
            Field::RfmRecency | Field::RfmFrequency | Field::RfmMonetary => SCORE,
        }
    }

    /// Fields read from the cached analytics (RFM, churn risk).
    pub fn needs_analytics(&self) -> bool {
        matches!(
            self,
            Field::RfmRecency | Field::RfmFrequency | Field::RfmMonetary | Field::ChurnRisk
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    In,
    NotIn,
    Gt,
    Gte,
    Lt,
    Lte,
    Between,
    Contains,
    Exists,
    WithinLastDays,
    Before,
    After,
}

impl Op {
    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "eq" => Op::Eq,
            "neq" => Op::Neq,
            "in" => Op::In,
            "not_in" => Op::NotIn,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "between" => Op::Between,
            "contains" => Op::Contains,
            "exists" => Op::Exists,
            "within_last_days" => Op::WithinLastDays,
            "before" => Op::Before,
            "after" => Op::After,
            _ => return None,
        })
    }

    /// The operators that make sense for a kind of field.
    fn allowed(kind: FieldKind) -> &'static [Op] {
        use Op::*;
        match kind {
            FieldKind::Text => &[Eq, Neq, In, NotIn, Exists],
            FieldKind::Bool => &[Eq],
            FieldKind::Enum(_) => &[Eq, Neq, In, NotIn],
            FieldKind::Int { .. } => &[Eq, Neq, In, NotIn, Gt, Gte, Lt, Lte, Between, Exists],
            FieldKind::Time => &[Before, After, Between, WithinLastDays, Exists],
            FieldKind::Tags => &[Contains, In, NotIn, Exists],
            FieldKind::Purchased | FieldKind::SubmittedForm => &[Eq, Neq],
            FieldKind::Spent => &[Gt, Gte, Lt, Lte, Between],
            FieldKind::ExpiringDays => &[Lte],
        }
    }

    fn names(kind: FieldKind) -> String {
        Op::allowed(kind)
            .iter()
            .map(|o| format!("{o:?}"))
            .map(|n| snake(&n))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// A condition's value, typed by its field and operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Text(String),
    Texts(Vec<String>),
    Bool(bool),
    Int(i64),
    Ints(Vec<i64>),
    IntRange(i64, i64),
    Time(OffsetDateTime),
    TimeRange(OffsetDateTime, OffsetDateTime),
    Days(i64),
    /// `purchased`: an SKU or a category (matched without regard to
    /// ASCII case), bought within a window.
    Item {
        sku: Option<String>,
        category: Option<String>,
        within_days: Option<i64>,
    },
    /// `spent`: what was spent within a window and/or on an SKU or a
    /// category, compared with `amount` (an `Int`, or an `IntRange` for
    /// `between`).
    Spend {
        amount: Box<Operand>,
        sku: Option<String>,
        category: Option<String>,
        within_days: Option<i64>,
    },
    /// `submitted_form`: a form, within a window.
    Form {
        form_id: String,
        within_days: Option<i64>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: Field,
    pub op: Op,
    pub value: Operand,
}

/// Named segments usable as building blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Prospects,
    NewCustomers,
    Repeat,
    Vip,
    AtRisk,
    Dormant,
    PointsExpiring,
}

impl Builtin {
    pub const NAMES: &'static [&'static str] = &[
        "prospects",
        "new_customers",
        "repeat",
        "vip",
        "at_risk",
        "dormant",
        "points_expiring",
    ];

    /// How many conditions the built-in counts for under
    /// [`MAX_CONDITIONS`]: the predicates it compiles to (see
    /// `compile.rs`), so a definition of built-ins is bounded like one of
    /// conditions. `new_customers` is `order_count >= 1` and a first order
    /// in the last 30 days; `vip` is `order_count >= 1` and the 12-month
    /// spend subquery; the others are one predicate each.
    pub fn conditions(self) -> usize {
        match self {
            Builtin::NewCustomers | Builtin::Vip => 2,
            Builtin::Prospects
            | Builtin::Repeat
            | Builtin::AtRisk
            | Builtin::Dormant
            | Builtin::PointsExpiring => 1,
        }
    }

    pub fn parse(name: &str) -> Option<Builtin> {
        Some(match name {
            "prospects" => Builtin::Prospects,
            "new_customers" => Builtin::NewCustomers,
            "repeat" => Builtin::Repeat,
            "vip" => Builtin::Vip,
            "at_risk" => Builtin::AtRisk,
            "dormant" => Builtin::Dormant,
            "points_expiring" => Builtin::PointsExpiring,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Condition(Condition),
    Builtin(Builtin),
}

impl Node {
    /// Whether evaluating needs the cached analytics (RFM, churn, VIP).
    pub fn needs_analytics(&self) -> bool {
        match self {
            Node::All(nodes) | Node::Any(nodes) => nodes.iter().any(Node::needs_analytics),
            Node::Not(node) => node.needs_analytics(),
            Node::Condition(c) => c.field.needs_analytics(),
            Node::Builtin(b) => matches!(b, Builtin::AtRisk | Builtin::Vip),
        }
    }
}

/// Parses a definition, reading dates (`YYYY-MM-DD`) as midnight in the
/// default zone ([`crate::shop_time::DEFAULT`]); requests use [`parse_in`]
/// with the configured zone.
pub fn parse(json: &Json) -> Result<Node, ApiError> {
    parse_in(json, crate::shop_time::DEFAULT)
}

/// Parses a definition, reading dates as midnight at `offset` (the shop's
/// time zone); every error names its node by JSON pointer.
pub fn parse_in(json: &Json, offset: time::UtcOffset) -> Result<Node, ApiError> {
    let mut conditions = 0;
    let mut errors = Vec::new();
    let node = parse_node(json, "", 1, &mut conditions, &mut errors, offset);
    match node {
        Some(node) if errors.is_empty() => Ok(node),
        _ => {
            if errors.is_empty() {
                errors.push(FieldError::new("/", "not a valid definition"));
            }
            Err(ApiError::Validation(errors))
        }
    }
}

fn fail<T>(errors: &mut Vec<FieldError>, pointer: &str, message: impl Into<String>) -> Option<T> {
    let pointer = if pointer.is_empty() {
        "/".to_owned()
    } else {
        pointer.to_owned()
    };
    errors.push(FieldError::new(pointer, message));
    None
}

fn parse_node(
    json: &Json,
    pointer: &str,
    depth: usize,
    conditions: &mut usize,
    errors: &mut Vec<FieldError>,
    offset: time::UtcOffset,
) -> Option<Node> {
    if depth > MAX_DEPTH {
        return fail(
            errors,
            pointer,
            format!("nested deeper than {MAX_DEPTH} levels"),
        );
    }
    let Json::Object(object) = json else {
        return fail(
            errors,
            pointer,
            "a node is an object: all, any, not, segment or a condition",
        );
    };
    let group =
        |key: &str, errors: &mut Vec<FieldError>, conditions: &mut usize| -> Option<Vec<Node>> {
            let child_pointer = format!("{pointer}/{key}");
            let Some(Json::Array(items)) = object.get(key) else {
                return fail(errors, &child_pointer, "a list of nodes");
            };
            if items.is_empty() || items.len() > MAX_CONDITIONS {
                return fail(
                    errors,
                    &child_pointer,
                    format!("1 to {MAX_CONDITIONS} nodes"),
                );
            }
            let nodes: Vec<Option<Node>> = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    parse_node(
                        item,
                        &format!("{child_pointer}/{i}"),
                        depth + 1,
                        conditions,
                        errors,
                        offset,
                    )
                })
                .collect();
            nodes.into_iter().collect()
        };
    if object.len() != 1 && !object.contains_key("field") {
        return fail(
            errors,
            pointer,
            "a node has exactly one of: all, any, not, segment; or field, op, value",
        );
    }
    if object.contains_key("all") {
        return group("all", errors, conditions).map(Node::All);
    }
    if object.contains_key("any") {
        return group("any", errors, conditions).map(Node::Any);
    }
    if let Some(inner) = object.get("not") {
        return parse_node(
            inner,
            &format!("{pointer}/not"),
            depth + 1,
            conditions,
            errors,
            offset,
        )
        .map(|n| Node::Not(Box::new(n)));
    }
    if let Some(name) = object.get("segment") {
        return match name.as_str().and_then(Builtin::parse) {
            Some(builtin) => {
                *conditions += builtin.conditions();
                if *conditions > MAX_CONDITIONS {
                    return fail(
                        errors,
                        pointer,
                        format!(
                            "more than {MAX_CONDITIONS} conditions \
                             (a built-in segment counts as the conditions it stands for)"
                        ),
                    );
                }
                Some(Node::Builtin(builtin))
            }
            None => fail(
                errors,
                &format!("{pointer}/segment"),
                format!("one of {}", Builtin::NAMES.join(", ")),
            ),
        };
    }
    *conditions += 1;
    if *conditions > MAX_CONDITIONS {
        return fail(
            errors,
            pointer,
            format!("more than {MAX_CONDITIONS} conditions"),
        );
    }
    parse_condition(object, pointer, errors, offset).map(Node::Condition)
}

fn parse_condition(
    object: &serde_json::Map<String, Json>,
    pointer: &str,
    errors: &mut Vec<FieldError>,
    offset: time::UtcOffset,
) -> Option<Condition> {
    for key in object.keys() {
        if !matches!(key.as_str(), "field" | "op" | "value") {
            return fail(
                errors,
                &format!("{pointer}/{}", escape(key)),
                "unknown member of a condition",
            );
        }
    }
    let field_pointer = format!("{pointer}/field");
    let field = match object.get("field").and_then(Json::as_str) {
        Some(name) => match Field::parse(name) {
            Some(field) => field,
            None => {
                return fail(
                    errors,
                    &field_pointer,
                    format!("unknown field; fields are {}", Field::NAMES.join(", ")),
                );
            }
        },
        None => return fail(errors, &field_pointer, "a field name is required"),
    };
    let kind = field.kind();
    let op_pointer = format!("{pointer}/op");
    let op = match object
        .get("op")
        .and_then(Json::as_str)
        .map(|n| (n, Op::parse(n)))
    {
        Some((_, Some(op))) if Op::allowed(kind).contains(&op) => op,
        Some(_) => {
            return fail(
                errors,
                &op_pointer,
                format!("operators for this field: {}", Op::names(kind)),
            );
        }
        None => return fail(errors, &op_pointer, "an operator is required"),
    };
    let value_pointer = format!("{pointer}/value");
    let value = object.get("value").unwrap_or(&Json::Null);
    let operand = match parse_value(kind, op, value, offset) {
        Ok(operand) => operand,
        Err(message) => return fail(errors, &value_pointer, message),
    };
    Some(Condition {
        field,
        op,
        value: operand,
    })
}

/// JSON pointer escaping (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn text(value: &Json) -> Result<String, String> {
    match value.as_str() {
        Some(s) if s.chars().count() <= MAX_TEXT && !crate::text::has_control_chars(s) => {
            Ok(s.to_owned())
        }
        _ => Err(format!("a string of at most {MAX_TEXT} characters")),
    }
}

fn texts(value: &Json) -> Result<Vec<String>, String> {
    match value.as_array() {
        Some(items) if !items.is_empty() && items.len() <= MAX_LIST => {
            items.iter().map(text).collect()
        }
        _ => Err(format!("a list of 1 to {MAX_LIST} strings")),
    }
}

fn int(value: &Json, min: i64, max: i64) -> Result<i64, String> {
    value
        .as_i64()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| format!("a whole number from {min} to {max}"))
}

fn days(value: &Json) -> Result<i64, String> {
    int(value, 1, MAX_DAYS)
}

/// A moment: an RFC 3339 timestamp, or a date taken as midnight in the
/// shop's time zone. Either must fall within years 1..=9999 in UTC
/// ([`timestamp::MIN`]..=[`timestamp::MAX`]), the range stored times
/// have, so that compiling never leaves it (no conversion can overflow).
fn time(value: &Json, offset: time::UtcOffset) -> Result<OffsetDateTime, String> {
    let message = || {
        "an RFC 3339 timestamp or a date YYYY-MM-DD, from 0001-01-01T00:00:00Z \
         to 9999-12-31T23:59:59.999999Z"
            .to_owned()
    };
    let text = value.as_str().ok_or_else(message)?;
    if let Some(t) = timestamp::parse(text) {
        return Ok(t);
    }
    let date = parse_date(text).ok_or_else(message)?;
    date.with_time(time::Time::MIDNIGHT)
        .assume_offset(offset)
        .checked_to_offset(time::UtcOffset::UTC)
        .filter(|t| timestamp::in_range(*t))
        .ok_or_else(message)
}

/// A date `YYYY-MM-DD` as `time`'s format description `[year]-[month]-[day]`
/// reads it: an optional `+` or `-`, exactly four digits, then two for the
/// month and two for the day, nothing after; `time::Date` checks the
/// calendar. Split by hand because `time`'s format-description parser is
/// about 20 KB of Wasm in every component that reads a segment
/// definition; a test holds this to the crate's answer.
fn parse_date(text: &str) -> Option<time::Date> {
    let (sign, rest) = match text.as_bytes() {
        [b'-', rest @ ..] => (-1, rest),
        [b'+', rest @ ..] => (1, rest),
        rest => (1, rest),
    };
    let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = *rest else {
        return None;
    };
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u16, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u16::from(d - b'0'))
        })
    };
    let year = sign * i32::from(number(&[y0, y1, y2, y3])?);
    let month = time::Month::try_from(u8::try_from(number(&[m0, m1])?).ok()?).ok()?;
    let day = u8::try_from(number(&[d0, d1])?).ok()?;
    time::Date::from_calendar_date(year, month, day).ok()
}

fn pair<T>(value: &Json, one: impl Fn(&Json) -> Result<T, String>) -> Result<(T, T), String> {
    match value.as_array().map(Vec::as_slice) {
        Some([a, b]) => Ok((one(a)?, one(b)?)),
        _ => Err("a list of two values [from, to]".to_owned()),
    }
}

fn parse_value(
    kind: FieldKind,
    op: Op,
    value: &Json,
    offset: time::UtcOffset,
) -> Result<Operand, String> {
    if op == Op::Exists {
        return value
            .as_bool()
            .map(Operand::Bool)
            .ok_or_else(|| "true or false".to_owned());
    }
    match kind {
        FieldKind::Text => match op {
            Op::In | Op::NotIn => texts(value).map(Operand::Texts),
            _ => text(value).map(Operand::Text),
        },
        FieldKind::Bool => value
            .as_bool()
            .map(Operand::Bool)
            .ok_or_else(|| "true or false".to_owned()),
        FieldKind::Enum(values) => {
            let one = |v: &Json| match v.as_str() {
                Some(s) if values.contains(&s) => Ok(s.to_owned()),
                _ => Err(format!("one of {}", values.join(", "))),
            };
            match op {
                Op::In | Op::NotIn => match value.as_array() {
                    Some(items) if !items.is_empty() && items.len() <= MAX_LIST => items
                        .iter()
                        .map(one)
                        .collect::<Result<_, _>>()
                        .map(Operand::Texts),
                    _ => Err(format!("a list of {}", values.join(", "))),
                },
                _ => one(value).map(Operand::Text),
            }
        }
        FieldKind::Int { min, max } => match op {
            Op::Between => {
                let (a, b) = pair(value, |v| int(v, min, max))?;
                if a > b {
                    return Err("from must not be greater than to".to_owned());
                }
                Ok(Operand::IntRange(a, b))
            }
            Op::In | Op::NotIn => match value.as_array() {
                Some(items) if !items.is_empty() && items.len() <= MAX_LIST => items
                    .iter()
                    .map(|v| int(v, min, max))
                    .collect::<Result<_, _>>()
                    .map(Operand::Ints),
                _ => Err(format!("a list of whole numbers from {min} to {max}")),
            },
            _ => int(value, min, max).map(Operand::Int),
        },
        FieldKind::Time => match op {
            Op::WithinLastDays => days(value).map(Operand::Days),
            Op::Between => {
                let (a, b) = pair(value, |v| time(v, offset))?;
                if a > b {
                    return Err("from must not be after to".to_owned());
                }
                Ok(Operand::TimeRange(a, b))
            }
            _ => time(value, offset).map(Operand::Time),
        },
        FieldKind::Tags => match op {
            Op::Contains => text(value).map(Operand::Text),
            _ => texts(value).map(Operand::Texts),
        },
        FieldKind::Purchased => {
            let object = value
                .as_object()
                .ok_or("an object {sku or category, within_days?}")?;
            if object
                .keys()
                .any(|k| !matches!(k.as_str(), "sku" | "category" | "within_days"))
            {
                return Err("only sku, category and within_days".to_owned());
            }
            let sku = object.get("sku").map(text).transpose()?;
            let category = object.get("category").map(text).transpose()?;
            if sku.is_some() == category.is_some() {
                return Err("exactly one of sku or category".to_owned());
            }
            let within_days = object.get("within_days").map(days).transpose()?;
            Ok(Operand::Item {
                sku,
                category,
                within_days,
            })
        }
        FieldKind::Spent => {
            let object = value
                .as_object()
                .ok_or("an object {amount, within_days?, category? or sku?}")?;
            if object
                .keys()
                .any(|k| !matches!(k.as_str(), "amount" | "sku" | "category" | "within_days"))
            {
                return Err("only amount, within_days, category and sku".to_owned());
            }
            let amount = object.get("amount").ok_or("amount is required")?;
            let (min, max) = (0, MONEY_MAX);
            let amount = match op {
                Op::Between => {
                    let (a, b) = pair(amount, |v| int(v, min, max)).map_err(|_| {
                        format!("amount: a list [from, to] of whole numbers from {min} to {max}")
                    })?;
                    if a > b {
                        return Err("amount: from must not be greater than to".to_owned());
                    }
                    Operand::IntRange(a, b)
                }
                _ => Operand::Int(int(amount, min, max).map_err(|e| format!("amount: {e}"))?),
            };
            let sku = object.get("sku").map(text).transpose()?;
            let category = object.get("category").map(text).transpose()?;
            if sku.is_some() && category.is_some() {
                return Err("at most one of sku or category".to_owned());
            }
            let within_days = object.get("within_days").map(days).transpose()?;
            if sku.is_none() && category.is_none() && within_days.is_none() {
                return Err(
                    "within_days, category or sku is required (lifetime spend is total_spent)"
                        .to_owned(),
                );
            }
            Ok(Operand::Spend {
                amount: Box::new(amount),
                sku,
                category,
                within_days,
            })
        }
        FieldKind::SubmittedForm => {
            let object = value
                .as_object()
                .ok_or("an object {form_id, within_days?}")?;
            if object
                .keys()
                .any(|k| !matches!(k.as_str(), "form_id" | "within_days"))
            {
                return Err("only form_id and within_days".to_owned());
            }
            let form_id = object
                .get("form_id")
                .ok_or("form_id is required".to_owned())
                .and_then(text)?;
            let within_days = object.get("within_days").map(days).transpose()?;
            Ok(Operand::Form {
                form_id,
                within_days,
            })
        }
        FieldKind::ExpiringDays => days(value).map(Operand::Days),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `time`'s own reading of `[year]-[month]-[day]`, which `parse_date`
    /// stands in for.
    fn crate_date(text: &str) -> Option<time::Date> {
        time::Date::parse(
            text,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .ok()
    }

    #[test]
    fn dates_read_as_the_time_crate_reads_them() {
        let mut cases: Vec<String> = [
            "",
            "2026-11-22",
            "2026-02-29",
            "2024-02-29",
            "2026-04-31",
            "2026-00-10",
            "2026-13-01",
            "2026-12-00",
            "2026-12-32",
            "0000-01-01",
            "-0000-01-01",
            "+2026-11-22",
            "-2026-11-22",
            "+-2026-11-22",
            "++2026-11-22",
            "9999-12-31",
            "0001-01-01",
            " 2026-11-22",
            "2026-11-22 ",
            "2026-11-22T00:00",
            "20261122",
            "2026-1-22",
            "2026-11-2",
            "202-11-22",
            "20266-11-22",
            "2026/11/22",
            "２０２６-11-22",
            "2026-11-22\n",
            "+",
            "-",
            "2026-11-2a",
            "a026-11-22",
        ]
        .map(str::to_owned)
        .to_vec();
        for year in ["0000", "0001", "1900", "2000", "2023", "2024", "9999"] {
            for month in 0..=13 {
                for day in 0..=32 {
                    for sign in ["", "+", "-"] {
                        cases.push(format!("{sign}{year}-{month:02}-{day:02}"));
                    }
                }
            }
        }
        for case in &cases {
            assert_eq!(parse_date(case), crate_date(case), "{case:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn generated_dates_read_as_the_time_crate_reads_them(
            text in "[+-]{0,2}[0-9]{3,5}-[0-9]{1,3}-[0-9]{1,3}|\\PC{0,14}"
        ) {
            proptest::prop_assert_eq!(parse_date(&text), crate_date(&text));
        }
    }

    fn pointer_of(definition: Json) -> String {
        match parse(&definition) {
            Err(ApiError::Validation(errors)) => errors[0].field.clone(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn parses_nested_definitions() {
        let node = parse(&json!({"all": [
            {"field": "total_spent", "op": "gte", "value": 50000},
            {"any": [{"segment": "vip"}, {"field": "tags", "op": "contains", "value": "gold"}]},
            {"not": {"field": "email_domain", "op": "in", "value": ["example.com"]}}
        ]}))
        .unwrap();
        assert!(node.needs_analytics());
    }

    #[test]
    fn errors_point_at_the_offending_node() {
        for (case, definition, pointer) in [
            (
                "unknown field",
                json!({"all": [{"field": "password", "op": "eq", "value": "x"}]}),
                "/all/0/field",
            ),
            (
                "bad operator for the field",
                json!({"field": "tags", "op": "gt", "value": 1}),
                "/op",
            ),
            (
                "wrong value type",
                json!({"any": [{"field": "order_count", "op": "gte", "value": "3"}]}),
                "/any/0/value",
            ),
            (
                "sql in a field name",
                json!({"field": "email; DROP TABLE contacts", "op": "eq", "value": "x"}),
                "/field",
            ),
            (
                "unknown member",
                json!({"field": "source", "op": "eq", "value": "x", "sql": "1=1"}),
                "/sql",
            ),
            ("empty group", json!({"all": []}), "/all"),
            (
                "between reversed",
                json!({"field": "order_count", "op": "between", "value": [5, 1]}),
                "/value",
            ),
            (
                "unknown builtin",
                json!({"segment": "everyone"}),
                "/segment",
            ),
        ] {
            assert_eq!(pointer_of(definition), pointer, "case {case}");
        }
        let mut deep = json!({"field": "order_count", "op": "gte", "value": 1});
        for _ in 0..MAX_DEPTH {
            deep = json!({"not": deep});
        }
        assert_eq!(pointer_of(deep), "/not/not/not/not/not/not", "too deep");
        let many: Vec<Json> = (0..=MAX_CONDITIONS)
            .map(|_| json!({"field": "order_count", "op": "gte", "value": 1}))
            .collect();
        assert_eq!(pointer_of(json!({"all": many})), "/all", "too many");
        // Built-ins count too: 101 of them over two groups, and `vip`
        // (two predicates) 51 times.
        let prospects = |n: usize| vec![json!({"segment": "prospects"}); n];
        assert_eq!(
            pointer_of(json!({"all": [{"any": prospects(50)}, {"any": prospects(51)}]})),
            "/all/1/any/50",
            "101 built-ins"
        );
        let vip = vec![json!({"segment": "vip"}); 51];
        assert_eq!(pointer_of(json!({"any": vip})), "/any/50", "51 vip");
        let mut at_the_cap = vec![json!({"field": "order_count", "op": "gte", "value": 1}); 98];
        at_the_cap.push(json!({"segment": "vip"}));
        assert!(parse(&json!({"all": at_the_cap})).is_ok(), "98 + vip");
    }
}

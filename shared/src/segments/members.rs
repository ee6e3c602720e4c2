//! Segment members as a caller receives them: the fields `fields=` may
//! select, the one statement that reads them (a keyset page of a segment,
//! or given ids for delta sync), and their JSON and CSV forms.
//!
//! JSON keeps the API's conventions (RFC 3339 UTC, money in minor units,
//! phones in E.164). CSV is for a mail tool, a postal mailing and Excel:
//! - date-times in the shop's time zone (`shop_timezone`, Asia/Tokyo by
//!   default) as `YYYY-MM-DD HH:MM:SS`, which spreadsheets read as a date;
//! - money in major units of the shop's currency, named in the header
//!   (`total_spent_jpy`);
//! - Japanese phones as written in Japan (`090-1234-5678`), see
//!   [`phone_cell`];
//! - RFC 4180 quoting, and a leading `'` on any cell a spreadsheet would
//!   run as a formula (see [`csv_escape`]).

use crate::config::Config;
use crate::error::ApiError;
use crate::phone::{Phone, Region};
use crate::ports::{Db, Row, Value};
use crate::{shop_time, timestamp};
use anyhow::Context as _;
use serde_json::{Map, Value as Json, json};
use time::OffsetDateTime;

/// A member field a caller may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberField {
    Id,
    Email,
    Phone,
    Name,
    FamilyName,
    GivenName,
    FamilyNameKana,
    GivenNameKana,
    PostalCode,
    /// One text as the person wrote it: prefecture, city and street are
    /// not stored apart.
    Address,
    /// Every attribute, as one object (one JSON cell in CSV).
    Attributes,
    /// One attribute (`attributes.<key>`), its own CSV column.
    Attribute(String),
    Tags,
    Counters,
    Points,
    /// The member's signed one-click unsubscribe link.
    UnsubscribeUrl,
}

impl MemberField {
    pub const NAMES: &'static [&'static str] = &[
        "id",
        "email",
        "phone",
        "name",
        "family_name",
        "given_name",
        "family_name_kana",
        "given_name_kana",
        "postal_code",
        "address",
        "attributes",
        "attributes.<key>",
        "tags",
        "counters",
        "points",
        "unsubscribe_url",
    ];

    /// The fields without `fields=`.
    pub const DEFAULT: &'static [MemberField] = &[
        MemberField::Id,
        MemberField::Email,
        MemberField::Phone,
        MemberField::Name,
    ];

    pub fn parse(name: &str) -> Option<MemberField> {
        use MemberField::*;
        Some(match name {
            "id" => Id,
            "email" => Email,
            "phone" => Phone,
            "name" => Name,
            "family_name" => FamilyName,
            "given_name" => GivenName,
            "family_name_kana" => FamilyNameKana,
            "given_name_kana" => GivenNameKana,
            "postal_code" => PostalCode,
            "address" => Address,
            "attributes" => Attributes,
            "tags" => Tags,
            "counters" => Counters,
            "points" => Points,
            "unsubscribe_url" => UnsubscribeUrl,
            other => {
                let key = other.strip_prefix("attributes.")?;
                let valid = !key.is_empty()
                    && key.chars().count() <= crate::profile::MAX_ATTRIBUTE_KEY_CHARS
                    && !crate::text::has_control_chars(key);
                return valid.then(|| Attribute(key.to_owned()));
            }
        })
    }

    /// Whether the field tells who the person is, or reaches them (an
    /// unsubscribe link acts for them): asking for one needs the
    /// `segments:export` scope.
    pub fn is_personal(&self) -> bool {
        !matches!(
            self,
            MemberField::Id | MemberField::Tags | MemberField::Counters | MemberField::Points
        )
    }

    /// The `contacts` column of a plain text field.
    fn column(&self) -> Option<&'static str> {
        Some(match self {
            MemberField::Email => "email",
            MemberField::Phone => "phone",
            MemberField::Name => "name",
            MemberField::FamilyName => "family_name",
            MemberField::GivenName => "given_name",
            MemberField::FamilyNameKana => "family_name_kana",
            MemberField::GivenNameKana => "given_name_kana",
            MemberField::PostalCode => "postal_code",
            MemberField::Address => "address",
            _ => return None,
        })
    }
}

/// The names of the fields that identify or reach a person (see
/// [`MemberField::is_personal`]), for the 403 that asks for
/// `segments:export`.
pub const PERSONAL_FIELDS: &[&str] = &[
    "email",
    "phone",
    "name",
    "family_name",
    "given_name",
    "family_name_kana",
    "given_name_kana",
    "postal_code",
    "address",
    "attributes",
    "unsubscribe_url",
];

/// The fields of `fields=a,b,c` (`id` always first, each once), or the
/// default ones; an unknown name is a 422 listing the valid ones.
pub fn parse_fields(text: Option<&str>) -> Result<Vec<MemberField>, ApiError> {
    let Some(text) = text else {
        return Ok(MemberField::DEFAULT.to_vec());
    };
    let mut fields = vec![MemberField::Id];
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let field = MemberField::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "fields",
                format!("each one of {}", MemberField::NAMES.join(", ")),
            )
        })?;
        if !fields.contains(&field) {
            fields.push(field);
        }
    }
    Ok(fields)
}

/// The select list over `contacts c` for `fields`: only what they read,
/// so a page of ids and emails costs no tag or points subquery. `now` is
/// the placeholder of the current time (points availability).
fn select_list(fields: &[MemberField], now: &str) -> String {
    let mut columns = vec!["c.id".to_owned()];
    let mut add = |column: String| {
        if !columns.contains(&column) {
            columns.push(column);
        }
    };
    for field in fields {
        if let Some(column) = field.column() {
            add(format!("c.{column}"));
            continue;
        }
        match field {
            MemberField::Attributes | MemberField::Attribute(_) => add("c.attributes".to_owned()),
            MemberField::Tags => add(
                "(SELECT json_group_array(t.tag) FROM (SELECT tag FROM contact_tags \
                 WHERE contact_id = c.id ORDER BY tag) t) AS tags"
                    .to_owned(),
            ),
            MemberField::Counters => {
                add("c.order_count".to_owned());
                add("c.total_spent_minor".to_owned());
                add("c.last_order_at".to_owned());
            }
            MemberField::Points => add(format!(
                "(SELECT COALESCE(SUM(p.remaining), 0) FROM points_lots p WHERE p.contact_id = c.id \
                 AND p.available_at <= {now} AND {open}) AS points",
                open = crate::points::ledger::open_lot_sql("p", now),
            )),
            _ => {}
        }
    }
    columns.join(", ")
}

/// The statement of one keyset page (`limit` + 1 rows, to tell whether
/// more follow) of the members matching `condition` (SQL over `contacts
/// c` with `condition_params` parameters), and its parameters: the
/// condition's, then the id after which the page starts (`''` on the
/// first page, which keeps the test sargable so SQLite walks the id
/// index in order instead of sorting members), the time, the limit.
pub fn page_query(
    condition: &str,
    condition_params: &[Value],
    fields: &[MemberField],
    after: Option<&str>,
    now: OffsetDateTime,
    limit: usize,
) -> (String, Vec<Value>) {
    let mut params = condition_params.to_vec();
    let n = params.len();
    params.push(after.unwrap_or("").into());
    params.push(timestamp::format(now).into());
    params.push(Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
    let sql = format!(
        "SELECT {select} FROM contacts c WHERE {condition} AND c.id > ?{after} ORDER BY c.id LIMIT ?{limit}",
        select = select_list(fields, &format!("?{}", n + 2)),
        after = n + 1,
        limit = n + 3,
    );
    (sql, params)
}

/// One page of members after `after`, at most `limit`, and the cursor of
/// the next page if there is one.
#[allow(clippy::too_many_arguments)]
pub async fn page(
    db: &impl Db,
    config: &Config,
    condition: &str,
    condition_params: &[Value],
    fields: &[MemberField],
    after: Option<&str>,
    now: OffsetDateTime,
    limit: usize,
) -> anyhow::Result<(Vec<Json>, Option<String>)> {
    let (sql, params) = page_query(condition, condition_params, fields, after, now, limit);
    let rows = db
        .execute(&sql, &params)
        .await
        .context("failed to read segment members")?;
    let mut members = Vec::new();
    let mut next = None;
    for (index, row) in rows.iter().enumerate() {
        if index == limit {
            next = members
                .last()
                .and_then(|m: &Json| m["id"].as_str())
                .map(|id| crate::http::encode_cursor(&[id]));
            break;
        }
        members.push(to_json(row, fields, config)?);
    }
    Ok((members, next))
}

/// The contacts `ids` with `fields`, in one statement, each beside the
/// row it was read from (for the caller's `extra` columns): `extra` is
/// more select-list SQL whose placeholders are `?1..=?k` for its `k`
/// `extra_params`.
pub async fn by_ids(
    db: &impl Db,
    fields: &[MemberField],
    ids: &[String],
    now: OffsetDateTime,
    extra: &str,
    extra_params: Vec<Value>,
) -> anyhow::Result<crate::ports::Rows> {
    let mut params = extra_params;
    let n = params.len();
    params.push(timestamp::format(now).into());
    params.push(serde_json::to_string(ids).context("ids")?.into());
    let sql = format!(
        "SELECT {select}{extra} FROM contacts c WHERE c.id IN (SELECT value FROM json_each(?{ids}))",
        select = select_list(fields, &format!("?{}", n + 1)),
        ids = n + 2,
    );
    db.execute(&sql, &params)
        .await
        .context("failed to read members by id")
}

/// A member's `fields` as JSON from a row of [`page_query`] or [`by_ids`].
pub fn to_json(row: Row<'_>, fields: &[MemberField], config: &Config) -> anyhow::Result<Json> {
    let mut out = Map::new();
    let id = row.str("id")?;
    let wants_attributes = fields
        .iter()
        .any(|f| matches!(f, MemberField::Attributes | MemberField::Attribute(_)));
    // Stored by Kizuna as a JSON object; read once per row.
    let mut attributes = if wants_attributes {
        match serde_json::from_str(row.opt_str("attributes")?.unwrap_or("{}")) {
            Ok(Json::Object(map)) => map,
            _ => Map::new(),
        }
    } else {
        Map::new()
    };
    for field in fields {
        if let Some(column) = field.column() {
            out.insert(column.to_owned(), row.opt_str(column)?.into());
            continue;
        }
        match field {
            MemberField::Id => {
                out.insert("id".to_owned(), id.into());
            }
            MemberField::Attributes => {
                out.insert("attributes".to_owned(), Json::Object(attributes.clone()));
            }
            MemberField::Attribute(key) => {
                if fields.contains(&MemberField::Attributes) {
                    continue;
                }
                let value = attributes.remove(key).unwrap_or(Json::Null);
                let selected = out
                    .entry("attributes")
                    .or_insert_with(|| Json::Object(Map::new()));
                if let Json::Object(selected) = selected {
                    selected.insert(key.clone(), value);
                }
            }
            MemberField::Tags => {
                let tags = serde_json::from_str::<Json>(row.opt_str("tags")?.unwrap_or("[]"))
                    .context("tags")?;
                out.insert("tags".to_owned(), tags);
            }
            MemberField::Counters => {
                out.insert(
                    "counters".to_owned(),
                    json!({
                        "order_count": row.i64("order_count")?,
                        "total_spent_minor": row.i64("total_spent_minor")?,
                        "last_order_at": row.opt_str("last_order_at")?,
                    }),
                );
            }
            MemberField::Points => {
                out.insert(
                    "points".to_owned(),
                    json!({ "available": row.i64("points")? }),
                );
            }
            MemberField::UnsubscribeUrl => {
                let (_, url) = crate::unsubscribe_link::url(config, id)?;
                out.insert("unsubscribe_url".to_owned(), url.into());
            }
            _ => {}
        }
    }
    Ok(Json::Object(out))
}

/// An erased contact as a member: its id, every other field null (its
/// data is gone; an unsubscribe link would name no one).
pub fn erased(id: &str, fields: &[MemberField]) -> Json {
    let mut out = Map::new();
    for field in fields {
        let key = match field {
            MemberField::Id => continue,
            MemberField::Attribute(_) => "attributes",
            MemberField::Attributes => "attributes",
            MemberField::Tags => "tags",
            MemberField::Counters => "counters",
            MemberField::Points => "points",
            MemberField::UnsubscribeUrl => "unsubscribe_url",
            other => other.column().unwrap_or_default(),
        };
        out.insert(key.to_owned(), Json::Null);
    }
    out.insert("id".to_owned(), id.into());
    Json::Object(out)
}

/// One CSV column: its header and where its cell comes from.
enum Column {
    /// A top-level text or number of the member's JSON.
    Plain(String),
    Phone,
    Attributes,
    Attribute(String),
    Tags,
    OrderCount,
    TotalSpent,
    LastOrderAt,
    PointsAvailable,
}

fn columns(fields: &[MemberField], config: &Config) -> Vec<(String, Column)> {
    let mut out = Vec::new();
    for field in fields {
        match field {
            MemberField::Id => out.push(("id".to_owned(), Column::Plain("id".to_owned()))),
            MemberField::Phone => out.push(("phone".to_owned(), Column::Phone)),
            MemberField::Attributes => out.push(("attributes".to_owned(), Column::Attributes)),
            MemberField::Attribute(key) => {
                if !fields.contains(&MemberField::Attributes) {
                    out.push((format!("attributes.{key}"), Column::Attribute(key.clone())));
                }
            }
            MemberField::Tags => out.push(("tags".to_owned(), Column::Tags)),
            MemberField::Counters => {
                let currency = config.shop_currency.code().to_ascii_lowercase();
                out.push(("order_count".to_owned(), Column::OrderCount));
                out.push((format!("total_spent_{currency}"), Column::TotalSpent));
                out.push(("last_order_at".to_owned(), Column::LastOrderAt));
            }
            MemberField::Points => {
                out.push(("points_available".to_owned(), Column::PointsAvailable))
            }
            MemberField::UnsubscribeUrl => out.push((
                "unsubscribe_url".to_owned(),
                Column::Plain("unsubscribe_url".to_owned()),
            )),
            other => {
                let name = other.column().unwrap_or_default().to_owned();
                out.push((name.clone(), Column::Plain(name)));
            }
        }
    }
    out
}

fn text_of(value: &Json) -> String {
    match value {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A phone cell. A Japanese number is written as in Japan
/// (`090-1234-5678`): Excel keeps that as text (a leading zero and two
/// hyphens are neither a number nor a date it recognises), so it needs no
/// guard and shows no apostrophe. Written bare (`09012345678`) Excel would
/// make it the number 9012345678, and in E.164 (`+819012345678`) it would
/// evaluate it as a formula; other countries' numbers stay in E.164 and
/// get the formula guard of [`csv_escape`].
pub fn phone_cell(e164: &str) -> String {
    Phone::parse(e164, Region::JP)
        .ok()
        .and_then(|phone| phone.japanese_national())
        .unwrap_or_else(|| e164.to_owned())
}

fn cell(member: &Json, column: &Column, config: &Config) -> String {
    match column {
        Column::Plain(key) => text_of(&member[key.as_str()]),
        Column::Phone => member["phone"].as_str().map(phone_cell).unwrap_or_default(),
        Column::Attributes => text_of(&member["attributes"]),
        Column::Attribute(key) => text_of(&member["attributes"][key.as_str()]),
        Column::Tags => member["tags"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .filter_map(Json::as_str)
                    .collect::<Vec<_>>()
                    .join(";")
            })
            .unwrap_or_default(),
        Column::OrderCount => text_of(&member["counters"]["order_count"]),
        Column::TotalSpent => member["counters"]["total_spent_minor"]
            .as_i64()
            .map(|minor| config.shop_currency.format_amount(minor))
            .unwrap_or_default(),
        Column::LastOrderAt => member["counters"]["last_order_at"]
            .as_str()
            .map(|text| {
                timestamp::parse(text)
                    .and_then(|at| shop_time::spreadsheet(at, config.shop_offset))
                    .unwrap_or_else(|| text.to_owned())
            })
            .unwrap_or_default(),
        Column::PointsAvailable => text_of(&member["points"]["available"]),
    }
}

/// RFC 4180 quoting, and a leading `'` on text a spreadsheet would run as
/// a formula (`=`, `+`, `-`, `@`, tab, CR), since these files are opened
/// in Excel: a name like `=HYPERLINK(…)` must stay text. Excel shows the
/// apostrophe of a CSV cell, so cells that need no guard get none (see
/// [`phone_cell`]).
pub fn csv_escape(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if guarded.contains([',', '"', '\n', '\r']) || guarded != value {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

/// Members as CSV rows (CRLF), with the header row and a UTF-8 BOM (for
/// Excel) when asked: pages are appended into one file, so only the
/// first page has them.
pub fn to_csv(
    members: &[Json],
    fields: &[MemberField],
    config: &Config,
    header: bool,
    bom: bool,
) -> String {
    let columns = columns(fields, config);
    let mut out = String::new();
    if bom {
        out.push('\u{feff}');
    }
    if header {
        let names: Vec<String> = columns.iter().map(|(name, _)| csv_escape(name)).collect();
        out.push_str(&names.join(","));
        out.push_str("\r\n");
    }
    for member in members {
        let values: Vec<String> = columns
            .iter()
            .map(|(_, column)| csv_escape(&cell(member, column, config)))
            .collect();
        out.push_str(&values.join(","));
        out.push_str("\r\n");
    }
    out
}

/// `Content-Disposition` of a segment's CSV: `attachment` with a file
/// name of the segment's name and the shop's date
/// (`Spring tea-2026-11-22.csv`). The plain `filename` is ASCII (the
/// segment id where the name has none, as with a Japanese name), and
/// `filename*` (RFC 6266, RFC 8187) carries the name in UTF-8 for every
/// browser and client that reads it. Characters a file name cannot hold
/// on Windows, macOS or Linux become `_`.
pub fn content_disposition(
    name: &str,
    id: &str,
    now: OffsetDateTime,
    offset: time::UtcOffset,
) -> String {
    let date = shop_time::spreadsheet(now, offset)
        .map(|t| t[..10].to_owned())
        .unwrap_or_default();
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let safe = safe.trim().trim_matches('.');
    let ascii: String = safe
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let ascii_base = if safe.is_empty() || !safe.is_ascii() {
        format!("segment-{id}")
    } else {
        ascii
    };
    let utf8_base = if safe.is_empty() {
        format!("segment-{id}")
    } else {
        safe.to_owned()
    };
    let encoded: String = format!("{utf8_base}-{date}.csv")
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii_base}-{date}.csv\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_guards_formulas() {
        assert_eq!(csv_escape("plain"), "plain");
        assert_eq!(csv_escape("a,b"), "\"a,b\"");
        assert_eq!(csv_escape("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(
            csv_escape("=HYPERLINK(\"x\")"),
            "\"'=HYPERLINK(\"\"x\"\")\""
        );
        assert_eq!(csv_escape("+14155552671"), "\"'+14155552671\"");
        assert_eq!(csv_escape("-1"), "\"'-1\"");
        assert_eq!(csv_escape("\tx"), "\"'\tx\"");
        assert_eq!(csv_escape("line\nbreak"), "\"line\nbreak\"");
    }

    #[test]
    fn japanese_phones_need_no_guard_and_others_keep_it() {
        assert_eq!(csv_escape(&phone_cell("+819012345678")), "090-1234-5678");
        assert_eq!(csv_escape(&phone_cell("+81312345678")), "03-1234-5678");
        assert_eq!(csv_escape(&phone_cell("+14155552671")), "\"'+14155552671\"");
    }

    #[test]
    fn fields_parse_with_id_first_and_unknown_ones_refused() {
        assert_eq!(parse_fields(None).unwrap(), MemberField::DEFAULT);
        assert_eq!(
            parse_fields(Some("email, attributes.plan,email")).unwrap(),
            [
                MemberField::Id,
                MemberField::Email,
                MemberField::Attribute("plan".to_owned())
            ]
        );
        for bad in ["password", "attributes.", "Email", "attributes.a\u{7}"] {
            let text = format!("id,{bad}");
            assert!(parse_fields(Some(&text)).is_err(), "case {bad}");
        }
    }

    #[test]
    fn the_personal_names_are_the_personal_fields() {
        let personal: Vec<&str> = MemberField::NAMES
            .iter()
            .filter(|name| {
                let name = name.replace("<key>", "k");
                MemberField::parse(&name).is_some_and(|f| f.is_personal())
                    && !name.starts_with("attributes.")
            })
            .copied()
            .collect();
        assert_eq!(personal, PERSONAL_FIELDS);
        assert!(MemberField::parse("attributes.plan").is_some_and(|f| f.is_personal()));
    }

    #[test]
    fn file_names_are_ascii_with_a_utf8_twin() {
        let tokyo = crate::shop_time::DEFAULT;
        let now = time::macros::datetime!(2026-11-21 22:05 UTC);
        let id = "0193a0b0-0000-7000-8000-000000000001";
        assert_eq!(
            content_disposition("Spring tea", id, now, tokyo),
            "attachment; filename=\"Spring tea-2026-11-22.csv\"; filename*=UTF-8''Spring%20tea-2026-11-22.csv"
        );
        assert_eq!(
            content_disposition("お茶/好き", id, now, tokyo),
            format!(
                "attachment; filename=\"segment-{id}-2026-11-22.csv\"; \
                 filename*=UTF-8''%E3%81%8A%E8%8C%B6_%E5%A5%BD%E3%81%8D-2026-11-22.csv"
            )
        );
    }
}

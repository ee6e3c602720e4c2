//! HTTP plumbing every component shares, over plain `http` types: reading
//! bodies (size, content type, UTF-8, JSON), query strings, responses and
//! problem documents, and opaque keyset cursors. No framework, no runtime.

use crate::error::{ApiError, FieldError};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub type Request = http::Request<Bytes>;
pub type Response = http::Response<Bytes>;

/// The most any component reads of a body. The Spin adapters stop reading
/// one byte past it, so larger bodies never reach memory in full; each
/// route then applies its own, smaller limit.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Default limit for API bodies.
pub const API_BODY_LIMIT: usize = 64 * 1024;

pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("response bodies always serialise");
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(bytes))
        .expect("static headers are valid")
}

pub fn empty_response(status: StatusCode) -> Response {
    http::Response::builder()
        .status(status)
        .body(Bytes::new())
        .expect("static headers are valid")
}

/// The problem document for `error`. Unexpected errors are logged here
/// with their cause chain (which never carries request bodies).
pub fn error_response(error: &ApiError) -> Response {
    if let ApiError::Unexpected(cause) = error {
        eprintln!("unexpected error: {cause:#}");
    }
    let problem = error.to_problem();
    let mut response = http::Response::builder()
        .status(problem.status)
        .header(header::CONTENT_TYPE, "application/problem+json");
    match error {
        ApiError::Unauthorized => {
            response = response.header(header::WWW_AUTHENTICATE, "Bearer");
        }
        ApiError::RateLimited {
            retry_after_seconds,
        } => {
            response = response.header(header::RETRY_AFTER, retry_after_seconds.to_string());
        }
        ApiError::MethodNotAllowed(allow) => {
            response = response.header(header::ALLOW, *allow);
        }
        _ if error.is_storage_unavailable() => {
            response = response.header(
                header::RETRY_AFTER,
                crate::error::STORAGE_RETRY_AFTER_SECONDS.to_string(),
            );
        }
        _ => {}
    }
    response
        .body(Bytes::from(
            serde_json::to_vec(&problem).expect("problems always serialise"),
        ))
        .expect("static headers are valid")
}

/// A copy of `request` (method, target, version, headers, body), for a
/// request that runs again (`pool::Pool::run`). Extensions are not
/// copied: nothing in Kizuna sets them.
pub fn duplicate(request: &Request) -> Request {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// The media type of the body, lower-cased, without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let media = value.split(';').next()?.trim().to_ascii_lowercase();
    (!media.is_empty()).then_some(media)
}

/// Refuses bodies over `limit` bytes.
pub fn check_size(body: &Bytes, limit: usize) -> Result<(), ApiError> {
    if body.len() > limit {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    Ok(())
}

/// The body as UTF-8 text.
pub fn body_text(body: &Bytes) -> Result<&str, ApiError> {
    std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("the body is not valid UTF-8".into()))
}

/// Reads the body of a `PATCH` that is a JSON merge patch (RFC 7396):
/// one object, sent as RFC 7396's own `application/merge-patch+json` or
/// as plain JSON like every other write, checked as [`read_json`] checks.
pub fn read_merge_patch(
    request: &Request,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    if media_type(request.headers()).as_deref() == Some("application/merge-patch+json") {
        check_size(request.body(), API_BODY_LIMIT)?;
        parse_json(request.body())
    } else {
        read_json(request)
    }
}

/// Reads a JSON API body into `T`: size, content type, UTF-8, syntax
/// (400), then shape (422, naming the field where serde can).
pub fn read_json<T: DeserializeOwned>(request: &Request) -> Result<T, ApiError> {
    check_size(request.body(), API_BODY_LIMIT)?;
    match media_type(request.headers()).as_deref() {
        Some("application/json") => {}
        Some(other) => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "expected application/json, got {other}"
            )));
        }
        None => {
            return Err(ApiError::UnsupportedMediaType(
                "expected a Content-Type of application/json".into(),
            ));
        }
    }
    parse_json(request.body())
}

/// Parses JSON bytes into `T` with the same 400 / 422 split as `read_json`.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let text = body_text(body)?;
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest("the body is empty".into()));
    }
    // Plain serde_json, and the field found from where the error is:
    // `serde_path_to_error` named it too, but wrapped every visitor of
    // every body type in its own copy (about 150 KB of each component).
    match serde_json::from_str::<T>(text) {
        Ok(value) => Ok(value),
        Err(e) => match e.classify() {
            serde_json::error::Category::Data => {
                let path = json_path_at(text, e.line(), e.column());
                let message = e.to_string();
                // An unknown field is named by the message, not the path
                // (which points at the object that holds it).
                let field = message
                    .strip_prefix("unknown field `")
                    .and_then(|rest| rest.split_once('`'))
                    .map(|(name, _)| name.to_owned())
                    .or_else(|| (!path.is_empty() && path != ".").then_some(path))
                    .unwrap_or_else(|| "body".to_owned());
                Err(ApiError::Validation(vec![FieldError::new(
                    shorten(&field),
                    shorten(&message),
                )]))
            }
            _ => Err(ApiError::BadRequest(format!(
                "the body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))),
        },
    }
}

/// The path, as `customer.email` or `line_items[2].price`, of the value
/// that serde_json stopped at (its 1-based `line`, and `column`: the
/// bytes of that line read) in valid JSON `text`: the keys and indexes
/// of the objects and arrays still open there, each object's named by
/// its latest key. serde_json stops just past the value it refuses (an
/// object missing a field: past its `}`, naming the object), so this
/// is the field a caller has to fix; `.` for the whole body.
fn json_path_at(text: &str, line: usize, column: usize) -> String {
    enum Open {
        Object(Option<String>),
        Array(usize),
    }
    let start_of_line = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum::<usize>();
    let end = (start_of_line + column).min(text.len());
    let bytes = text.as_bytes();
    let mut open: Vec<Open> = Vec::new();
    let mut i = 0;
    while i < end {
        match bytes[i] {
            b'{' => open.push(Open::Object(None)),
            b'[' => open.push(Open::Array(0)),
            b'}' | b']' => {
                open.pop();
            }
            b',' => {
                if let Some(Open::Array(index)) = open.last_mut() {
                    *index += 1;
                }
            }
            b'"' => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                let quoted = text.get(i..=j).unwrap_or_default();
                let is_key = text
                    .get(j + 1..)
                    .is_some_and(|rest| rest.trim_start().starts_with(':'));
                if is_key && let Some(Open::Object(key)) = open.last_mut() {
                    *key = serde_json::from_str::<String>(quoted).ok();
                }
                i = j;
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for segment in &open {
        match segment {
            Open::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Open::Object(None) => {}
            Open::Array(index) => path.push_str(&format!("[{index}]")),
        }
    }
    if path.is_empty() {
        ".".to_owned()
    } else {
        path
    }
}

// serde's messages can quote the offending input; keep them short.
fn shorten(message: &str) -> String {
    message.chars().take(200).collect()
}

/// Query parameters every route takes besides its own: `tz` chooses the
/// zone of the answer's timestamps (`answer_zone`).
pub const COMMON_QUERY_PARAMS: &[&str] = &["tz"];

/// The query string's pairs, percent-decoded, for a route that takes the
/// parameters `accepted` (and [`COMMON_QUERY_PARAMS`]). A parameter it
/// does not take, or one given twice, is a 422 naming it: a misspelt
/// filter must not answer as if it had filtered.
pub fn query_pairs(
    request: &Request,
    accepted: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let pairs = all_query_pairs(request);
    let mut errors = Vec::new();
    for (index, (name, _)) in pairs.iter().enumerate() {
        let takes =
            accepted.contains(&name.as_str()) || COMMON_QUERY_PARAMS.contains(&name.as_str());
        let message = if !takes {
            let mut names: Vec<&str> = accepted
                .iter()
                .chain(COMMON_QUERY_PARAMS)
                .copied()
                .collect();
            names.sort_unstable();
            format!(
                "not a parameter of this route, which takes: {}",
                names.join(", ")
            )
        } else if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
            "given more than once".to_owned()
        } else {
            continue;
        };
        if !errors.iter().any(|e: &FieldError| &e.field == name) {
            errors.push(FieldError::new(name.clone(), message));
        }
    }
    if errors.is_empty() {
        Ok(pairs)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Refuses any query parameter (but [`COMMON_QUERY_PARAMS`]) on a list or
/// report that takes none, as [`query_pairs`] does for those that do.
pub fn takes_no_query(request: &Request) -> Result<(), ApiError> {
    query_pairs(request, &[]).map(|_| ())
}

/// Every pair of the query string, unchecked: for public pages whose links
/// pass through mail tools and browsers that add their own (`utm_*`).
pub fn all_query_pairs(request: &Request) -> Vec<(String, String)> {
    request
        .uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn query_param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The path split into segments, percent-decoded, trailing slash ignored.
pub fn path_segments(request: &Request) -> Result<Vec<String>, ApiError> {
    request
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode(s)
                .ok_or_else(|| ApiError::BadRequest("the path is not valid UTF-8".into()))
        })
        .collect()
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Page size from `limit`: default 50, at most 200.
pub fn page_limit(pairs: &[(String, String)]) -> Result<usize, ApiError> {
    limit_between(pairs, 50, 200)
}

/// Page size from `limit`: `default` when absent, 1 to `max` when given.
pub fn limit_between(
    pairs: &[(String, String)],
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match query_param(pairs, "limit") {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "limit",
                format!("must be a whole number from 1 to {max}"),
            )),
        },
    }
}

/// An opaque keyset cursor: the sort key of the last row served.
pub fn encode_cursor(parts: &[&str]) -> String {
    URL_SAFE_NO_PAD.encode(parts.join("\u{1f}"))
}

pub fn decode_cursor(cursor: &str, expected_parts: usize) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::invalid("cursor", "not a cursor this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let parts: Vec<String> = text.split('\u{1f}').map(str::to_owned).collect();
    if parts.len() != expected_parts {
        return Err(bad());
    }
    Ok(parts)
}

/// `text` made safe inside HTML text and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub fn set_header(response: &mut Response, name: http::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// A `Server-Timing` value (W3C Server Timing) for the stages of one
/// request: each `(name, duration, description)`, durations in ms.
pub fn server_timing(stages: &[(&str, std::time::Duration, Option<String>)]) -> http::HeaderValue {
    let value = stages
        .iter()
        .map(|(name, duration, description)| {
            let ms = duration.as_secs_f64() * 1000.0;
            match description {
                Some(text) => format!("{name};dur={ms:.3};desc=\"{text}\""),
                None => format!("{name};dur={ms:.3}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    http::HeaderValue::from_str(&value).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor(&["2026-11-22T00:00:00.000000Z", "abc"]);
        assert_eq!(
            decode_cursor(&c, 2).unwrap(),
            vec!["2026-11-22T00:00:00.000000Z", "abc"]
        );
        assert!(decode_cursor("!!!", 2).is_err());
        assert!(decode_cursor(&c, 1).is_err());
    }

    proptest::proptest! {
        /// On bodies a client could send (any nesting of objects, arrays,
        /// escaped keys and strings with brackets in them, any layout),
        /// the path found from where serde_json stopped is the one
        /// `serde_path_to_error` named before it was replaced.
        #[test]
        fn the_path_found_is_the_one_serde_path_to_error_names(
            body in body_strategy(),
            pretty in proptest::bool::ANY,
        ) {
            #[derive(Debug, serde::Deserialize)]
            #[allow(dead_code)]
            struct Inner {
                n: u8,
                s: String,
                #[serde(default)]
                list: Vec<u8>,
            }
            #[derive(Debug, serde::Deserialize)]
            #[allow(dead_code)]
            struct Outer {
                a: Inner,
                #[serde(default)]
                items: Vec<Inner>,
                #[serde(default)]
                map: std::collections::BTreeMap<String, u8>,
            }
            let text = if pretty {
                serde_json::to_string_pretty(&body).unwrap()
            } else {
                body.to_string()
            };
            if let Err(error) = serde_json::from_str::<Outer>(&text) {
                let mut deserializer = serde_json::Deserializer::from_str(&text);
                let wrapped = serde_path_to_error::deserialize::<_, Outer>(&mut deserializer)
                    .expect_err("both refuse");
                let expected = wrapped.path().to_string();
                let found = json_path_at(&text, error.line(), error.column());
                // serde_path_to_error names an unknown field's parent
                // object; parse_json takes that name from the message.
                proptest::prop_assert_eq!(found, expected, "{}", text);
            }
        }
    }

    /// Bodies shaped like the test's `Outer`, each part sometimes of the
    /// wrong type or missing, with keys that need escaping beside them.
    fn body_strategy() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::{Value, json};
        let odd_key = "[a-z\\\\\"{}\\[\\],: ]{1,4}";
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-2i64..300).prop_map(Value::from),
            "[a-z{}\\[\\],:\"]{0,6}".prop_map(Value::from),
        ];
        let small = prop_oneof![4 => (0i64..256).prop_map(Value::from), 1 => leaf.clone()];
        let text = prop_oneof![4 => "[a-z\"{}]{0,5}".prop_map(Value::from), 1 => leaf.clone()];
        let inner = (
            proptest::option::weighted(0.9, small.clone()),
            proptest::option::weighted(0.9, text),
            proptest::option::of(proptest::collection::vec(small.clone(), 0..4)),
            proptest::option::weighted(0.2, (odd_key, leaf.clone())),
        )
            .prop_map(|(n, s, list, extra)| {
                let mut object = serde_json::Map::new();
                if let Some(extra) = extra {
                    object.insert(extra.0, extra.1);
                }
                if let Some(n) = n {
                    object.insert("n".into(), n);
                }
                if let Some(s) = s {
                    object.insert("s".into(), s);
                }
                if let Some(list) = list {
                    object.insert("list".into(), Value::from(list));
                }
                Value::Object(object)
            });
        let inner = prop_oneof![9 => inner, 1 => leaf.clone()];
        (
            proptest::option::weighted(0.95, inner.clone()),
            proptest::option::of(proptest::collection::vec(inner, 0..4)),
            proptest::option::of(proptest::collection::btree_map(odd_key, small, 0..3)),
        )
            .prop_map(|(a, items, map)| {
                let mut object = json!({});
                if let Some(a) = a {
                    object["a"] = a;
                }
                if let Some(items) = items {
                    object["items"] = Value::from(items);
                }
                if let Some(map) = map {
                    object["map"] = Value::Object(map.into_iter().collect());
                }
                object
            })
    }

    #[test]
    fn a_refused_value_is_named_by_its_path_in_the_body() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Line {
            sku: String,
            quantity: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[allow(dead_code)]
        enum Mode {
            Add,
            Replace,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Customer {
            email: String,
            tags: Vec<String>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            id: String,
            #[serde(default)]
            mode: Option<Mode>,
            customer: Customer,
            lines: Vec<Line>,
            #[serde(default)]
            extra: std::collections::BTreeMap<String, u8>,
        }
        let good_customer = r#"{"email": "a@example.jp", "tags": ["x"]}"#;
        let cases = [
            ("a number for a string", r#"{"id": 1}"#.to_owned(), "id"),
            (
                "an unknown variant",
                format!(
                    r#"{{"id": "1", "mode": "only", "customer": {good_customer}, "lines": []}}"#
                ),
                "mode",
            ),
            (
                "a missing nested field",
                r#"{"id": "1", "customer": {"tags": []}, "lines": []}"#.to_owned(),
                "customer",
            ),
            (
                "a missing top field",
                format!(r#"{{"id": "1", "customer": {good_customer}}}"#),
                ".",
            ),
            (
                "in an array",
                format!(
                    "{{\"id\": \"1\", \"customer\": {good_customer},\n \"lines\": [{{\"sku\": \"a\", \"quantity\": 1}},\n   {{\"sku\": \"b\", \"quantity\": -1}}]}}"
                ),
                "lines[1].quantity",
            ),
            (
                "missing in an array",
                format!(r#"{{"id": "1", "customer": {good_customer}, "lines": [{{"sku": "a"}}]}}"#),
                "lines[0]",
            ),
            (
                "deep in an array",
                r#"{"id": "1", "customer": {"email": "a", "tags": ["x", 2]}}"#.to_owned(),
                "customer.tags[1]",
            ),
            (
                "an escaped key",
                r#"{"id": "1", "extra": {"a\"b": 300}}"#.to_owned(),
                "extra.a\"b",
            ),
            (
                "a key with a brace in a string before it",
                r#"{"id": "}{[", "customer": {"email": 5}}"#.to_owned(),
                "customer.email",
            ),
        ];
        for (case, text, expected) in cases {
            let error = serde_json::from_str::<Body>(&text).expect_err(case);
            let path = json_path_at(&text, error.line(), error.column());
            // The path serde_path_to_error gives, which this replaced.
            let mut deserializer = serde_json::Deserializer::from_str(&text);
            let wrapped = serde_path_to_error::deserialize::<_, Body>(&mut deserializer)
                .expect_err(case)
                .path()
                .to_string();
            assert_eq!(path, expected, "case {case}: {error}");
            assert_eq!(path, wrapped, "case {case}: as before");
        }
    }

    #[test]
    fn html_escaping_leaves_no_markup() {
        assert_eq!(
            escape_html("<script>alert('x')</script> & \"q\" 山田"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot; 山田"
        );
    }

    #[test]
    fn decodes_percent_encoded_segments() {
        assert_eq!(percent_decode("vip%20tier").as_deref(), Some("vip tier"));
        assert_eq!(percent_decode("%E3%81%82").as_deref(), Some("あ"));
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
    }
}

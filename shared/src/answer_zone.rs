//! The zone an answer's timestamps are written in. Kizuna stores and
//! answers RFC 3339 in UTC; a caller that reads times as people do (a
//! call-centre screen, a report) asks for the shop's zone with `?tz=shop`
//! on any request, and every timestamp in the JSON answer is then written
//! with the shop's offset: the same instant, as the shop's clock read it.
//! Both adapters (Spin's and the native host) apply it around every
//! component, so no handler formats times twice.

use crate::error::ApiError;
use crate::http::{Request, Response, all_query_pairs};
use serde_json::Value;
use time::UtcOffset;

/// `?tz=` values: `utc` (the default) and `shop`.
pub const ZONE_NAMES: &str = "utc or shop";

/// The offset an answer to `request` is written in: `None` for UTC (no
/// `tz`, or `tz=utc`), the shop's for `tz=shop`; anything else is a 422.
pub fn asked(request: &Request, shop: UtcOffset) -> Result<Option<UtcOffset>, ApiError> {
    let pairs = all_query_pairs(request);
    let mut values = pairs.iter().filter(|(name, _)| name == "tz");
    let (first, second) = (values.next(), values.next());
    match (first.map(|(_, v)| v.as_str()), second) {
        (_, Some(_)) => Err(ApiError::invalid("tz", "given more than once")),
        (None | Some("utc"), None) => Ok(None),
        (Some("shop"), None) => Ok(Some(shop)),
        (Some(_), None) => Err(ApiError::invalid("tz", ZONE_NAMES)),
    }
}

/// Rewrites every timestamp Kizuna wrote in a JSON `response` (text in
/// exactly the stored form, `timestamp::is_stored_form`) into `offset`.
/// Other bodies (CSV, HTML, empty) pass unchanged, as does a JSON body
/// that holds no timestamp.
pub fn rewrite(response: Response, offset: UtcOffset) -> Response {
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/json") || v.starts_with("application/problem+json")
        });
    if !is_json {
        return response;
    }
    let Ok(mut body) = serde_json::from_slice::<Value>(response.body()) else {
        return response;
    };
    if !rewrite_value(&mut body, offset) {
        return response;
    }
    let Ok(bytes) = serde_json::to_vec(&body) else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    http::Response::from_parts(parts, bytes::Bytes::from(bytes))
}

/// True when anything was rewritten.
fn rewrite_value(value: &mut Value, offset: UtcOffset) -> bool {
    match value {
        Value::String(text) if crate::timestamp::is_stored_form(text) => {
            match crate::timestamp::parse(text)
                .and_then(|at| crate::timestamp::format_in(at, offset))
            {
                Some(local) => {
                    *text = local;
                    true
                }
                None => false,
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, item| rewrite_value(item, offset) | changed),
        Value::Object(members) => members
            .values_mut()
            .fold(false, |changed, item| rewrite_value(item, offset) | changed),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn request(uri: &str) -> Request {
        http::Request::builder()
            .uri(uri)
            .body(Bytes::new())
            .unwrap()
    }

    #[test]
    fn tz_is_utc_by_default_shop_on_request_and_nothing_else() {
        let tokyo = UtcOffset::from_hms(9, 0, 0).unwrap();
        assert_eq!(asked(&request("/v1/x"), tokyo).unwrap(), None);
        assert_eq!(asked(&request("/v1/x?tz=utc"), tokyo).unwrap(), None);
        assert_eq!(
            asked(&request("/v1/x?limit=2&tz=shop"), tokyo).unwrap(),
            Some(tokyo)
        );
        for bad in ["/v1/x?tz=Asia/Tokyo", "/v1/x?tz=", "/v1/x?tz=shop&tz=utc"] {
            assert!(asked(&request(bad), tokyo).is_err(), "{bad}");
        }
    }

    #[test]
    fn rewrites_only_stored_timestamps_in_json() {
        let tokyo = UtcOffset::from_hms(9, 0, 0).unwrap();
        let body = serde_json::json!({
            "created_at": "2026-11-21T22:05:00.000000Z",
            "items": [{"at": "2026-11-21T15:00:00.000000Z", "note": "2026-11-21T15:00:00Z"}],
            "birthday": "1990-05-01",
            "count": 3
        });
        let response = crate::http::json_response(http::StatusCode::OK, &body);
        let rewritten = rewrite(response, tokyo);
        let json: Value = serde_json::from_slice(rewritten.body()).unwrap();
        assert_eq!(json["created_at"], "2026-11-22T07:05:00.000000+09:00");
        assert_eq!(json["items"][0]["at"], "2026-11-22T00:00:00.000000+09:00");
        assert_eq!(
            json["items"][0]["note"], "2026-11-21T15:00:00Z",
            "not Kizuna's form"
        );
        assert_eq!(json["birthday"], "1990-05-01");
        assert_eq!(json["count"], 3);

        let csv = http::Response::builder()
            .header("content-type", "text/csv")
            .body(Bytes::from_static(b"2026-11-21T22:05:00.000000Z"))
            .unwrap();
        assert_eq!(
            rewrite(csv, tokyo).body().as_ref(),
            b"2026-11-21T22:05:00.000000Z"
        );
    }
}

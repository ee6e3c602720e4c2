//! The HTTP-independent error every use case converts into, and its one
//! mapping to an RFC 9457 problem document. Internal causes are logged,
//! never sent.

use serde::Serialize;

/// The `Retry-After` of a 503 for an unavailable database: a restarted
/// libSQL server answers again within seconds.
pub const STORAGE_RETRY_AFTER_SECONDS: u64 = 2;

/// One invalid field in a 422 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("missing or invalid webhook signature")]
    BadSignature,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("not enough points")]
    InsufficientPoints { available: i64 },
    #[error("body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("unsupported content type: {0}")]
    UnsupportedMediaType(String),
    #[error("invalid values")]
    Validation(Vec<FieldError>),
    #[error("rate limited")]
    RateLimited { retry_after_seconds: u64 },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// True when the request failed because the database could not serve
    /// it (down, restarted, busy past every retry, or it ended the
    /// transaction): nothing was written, and the same request may be
    /// sent again. It answers 503 with `Retry-After`.
    pub fn is_storage_unavailable(&self) -> bool {
        match self {
            ApiError::Unexpected(cause) => crate::ports::DbError::is_transient_cause(cause),
            _ => false,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extension members (RFC 9457 §3.2), e.g. `available` on a 409.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// The status and document a caller sees. The one place that decides.
    pub fn to_problem(&self) -> Problem {
        let (status, slug, title, detail, errors) = match self {
            ApiError::BadRequest(d) => (400, "malformed", "Malformed request", d.clone(), vec![]),
            ApiError::Unauthorized => (
                401,
                "unauthorized",
                "Unauthorized",
                "a valid API key is required: `Authorization: Bearer <key>`".to_owned(),
                vec![],
            ),
            ApiError::BadSignature => (
                401,
                "bad-signature",
                "Unauthorized",
                "the webhook signature is missing, stale or does not verify".to_owned(),
                vec![],
            ),
            ApiError::Forbidden(d) => (403, "forbidden", "Forbidden", d.clone(), vec![]),
            ApiError::NotFound(d) => (404, "not-found", "Not found", d.clone(), vec![]),
            ApiError::MethodNotAllowed(allow) => (
                405,
                "method-not-allowed",
                "Method not allowed",
                format!("allowed: {allow}"),
                vec![],
            ),
            ApiError::Conflict(d) => (409, "conflict", "Conflict", d.clone(), vec![]),
            ApiError::InsufficientPoints { available } => (
                409,
                "insufficient-points",
                "Insufficient points",
                format!("only {available} points are available"),
                vec![],
            ),
            ApiError::PayloadTooLarge(limit) => (
                413,
                "too-large",
                "Payload too large",
                format!("the body must be at most {limit} bytes"),
                vec![],
            ),
            ApiError::UnsupportedMediaType(d) => (
                415,
                "unsupported-media-type",
                "Unsupported media type",
                d.clone(),
                vec![],
            ),
            ApiError::Validation(errors) => (
                422,
                "validation",
                "Invalid values",
                "one or more fields are invalid; see `errors`".to_owned(),
                errors.clone(),
            ),
            ApiError::RateLimited {
                retry_after_seconds,
            } => (
                429,
                "rate-limited",
                "Too many requests",
                format!("try again in {retry_after_seconds} seconds"),
                vec![],
            ),
            ApiError::Unexpected(_) if self.is_storage_unavailable() => (
                503,
                "unavailable",
                "Service unavailable",
                format!(
                    "the database could not complete the request and nothing of it was stored; send it again in {STORAGE_RETRY_AFTER_SECONDS} s"
                ),
                vec![],
            ),
            ApiError::Unexpected(_) => (
                500,
                "internal",
                "Internal error",
                "the request could not be completed; it has been logged".to_owned(),
                vec![],
            ),
        };
        let mut extensions = serde_json::Map::new();
        if let ApiError::InsufficientPoints { available } = self {
            extensions.insert("available".to_owned(), (*available).into());
        }
        Problem {
            kind: format!("https://kizuna.dev/problems/{slug}"),
            title,
            status,
            detail,
            errors,
            extensions,
        }
    }
}

//! Component `segments`: segment definitions, preview, members (JSON and
//! CSV), counts, delta sync, and the analytics marketing tools read. The
//! language, its compiler and the analytics live in the domain crate
//! (`kizuna::segments`); this component adapts HTTP to them.

use http::Method;
use kizuna::Ctx;
use kizuna::auth::Scope;
use kizuna::error::ApiError;
use kizuna::http::{Request, Response, error_response, path_segments};
use kizuna::ports::{Db, Kv};
use kizuna::segments::{analytics, api};

/// Routes a request under `/v1/segments` or `/v1/analytics`.
pub async fn handle<D: Db, K: Kv>(request: Request, ctx: &Ctx<'_, D, K>) -> Response {
    match route(&request, ctx).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

async fn route<D: Db, K: Kv>(request: &Request, ctx: &Ctx<'_, D, K>) -> Result<Response, ApiError> {
    let segments = path_segments(request)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = request.method();
    let authorize = |scope: Scope| ctx.config.api_keys.authorize(request.headers(), scope);
    // Members with personal fields (email, phone, names, address,
    // attributes, unsubscribe links) need `segments:export` on top of
    // `segments:read`, in member lists and in delta sync alike.
    let may_export = || match authorize(Scope::SegmentsExport) {
        Ok(_) => Ok(()),
        Err(ApiError::Forbidden(_)) => Err(ApiError::Forbidden(format!(
            "this key lacks the `segments:export` scope, which the personal fields ({}) need; \
             ask for `fields=id,tags,counters,points` or use a key with it",
            api::PERSONAL_FIELDS.join(", ")
        ))),
        Err(other) => Err(other),
    };
    let get_only = |method: &Method| {
        if method == Method::GET {
            Ok(())
        } else {
            Err(ApiError::MethodNotAllowed("GET"))
        }
    };
    match segments.as_slice() {
        ["v1", "analytics", report] => {
            get_only(method)?;
            authorize(Scope::SegmentsRead)?;
            match *report {
                "summary" => {
                    kizuna::http::takes_no_query(request)?;
                    analytics::summary(ctx).await
                }
                "rfm" => {
                    kizuna::http::takes_no_query(request)?;
                    analytics::rfm_grid(ctx).await
                }
                "cross-sell" => analytics::cross_sell(ctx, request).await,
                _ => Err(ApiError::NotFound("no such report".into())),
            }
        }
        ["v1", "segments"] => match *method {
            Method::GET => {
                authorize(Scope::SegmentsRead)?;
                kizuna::http::takes_no_query(request)?;
                api::list(ctx.db).await
            }
            Method::POST => {
                let actor = authorize(Scope::SegmentsWrite)?;
                api::create(ctx, &actor, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET, POST")),
        },
        ["v1", "segments", "preview"] => match *method {
            Method::POST => {
                authorize(Scope::SegmentsRead)?;
                api::preview(ctx, request, may_export).await
            }
            _ => Err(ApiError::MethodNotAllowed("POST")),
        },
        ["v1", "segments", id] => match *method {
            Method::GET => {
                authorize(Scope::SegmentsRead)?;
                api::get(ctx.db, id).await
            }
            Method::PUT => {
                let actor = authorize(Scope::SegmentsWrite)?;
                api::replace(ctx, &actor, id, request).await
            }
            Method::DELETE => {
                authorize(Scope::SegmentsWrite)?;
                api::delete(ctx, id).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET, PUT, DELETE")),
        },
        ["v1", "segments", id, view] => {
            get_only(method)?;
            authorize(Scope::SegmentsRead)?;
            match *view {
                "contacts" => api::members(ctx, id, request, may_export).await,
                "count" => api::count_segment(ctx, id).await,
                "changes" => kizuna::segments::changes::changes(ctx, id, request, may_export).await,
                _ => Err(ApiError::NotFound("no such route".into())),
            }
        }
        _ => Err(ApiError::NotFound("no such route".into())),
    }
}

/// The Spin adapter.
#[cfg(target_arch = "wasm32")]
mod entrypoint {
    use spin_sdk::http::{IntoResponse, Request};

    #[spin_sdk::http_service]
    async fn segments(request: Request) -> impl IntoResponse {
        kizuna::spin_ports::serve(
            request,
            kizuna::config::SEGMENTS_VARIABLES,
            async |request, ctx| super::handle(request, ctx).await,
        )
        .await
    }
}

//! Component `events`: events out. This session it serves the webhook
//! endpoints API (`/v1/webhook-endpoints`); delivery and the scheduler
//! entry point join it, since this is the one component that will be
//! granted outbound hosts. It only adapts HTTP to
//! `kizuna::events::endpoints`.

use http::Method;
use kizuna::Ctx;
use kizuna::auth::Scope;
use kizuna::error::ApiError;
use kizuna::events::endpoints as api;
use kizuna::http::{Request, Response, error_response, path_segments};
use kizuna::ports::{Db, Kv};

/// Routes a request under `/v1/webhook-endpoints`.
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
    // Personal data in payloads is what `segments:export` guards in exports.
    let may_send_personal_data = || authorize(Scope::SegmentsExport).map(|_| ());
    match segments.as_slice() {
        ["v1", "webhook-endpoints"] => match *method {
            Method::GET => {
                authorize(Scope::WebhooksAdmin)?;
                api::list(ctx.db, request).await
            }
            Method::POST => {
                let actor = authorize(Scope::WebhooksAdmin)?;
                api::create(ctx, &actor, request, may_send_personal_data).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET, POST")),
        },
        ["v1", "webhook-endpoints", id] => match *method {
            Method::GET => {
                authorize(Scope::WebhooksAdmin)?;
                kizuna::http::takes_no_query(request)?;
                api::get(ctx.db, id).await
            }
            Method::PATCH => {
                let actor = authorize(Scope::WebhooksAdmin)?;
                api::update(ctx, &actor, id, request, may_send_personal_data).await
            }
            Method::DELETE => {
                authorize(Scope::WebhooksAdmin)?;
                api::delete(ctx, id).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET, PATCH, DELETE")),
        },
        ["v1", "webhook-endpoints", id, "rotate-secret"] => match *method {
            Method::POST => {
                let actor = authorize(Scope::WebhooksAdmin)?;
                api::rotate_secret(ctx, &actor, id, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("POST")),
        },
        _ => Err(ApiError::NotFound("no such route".into())),
    }
}

/// The Spin adapter.
#[cfg(target_arch = "wasm32")]
mod entrypoint {
    use spin_sdk::http::{IntoResponse, Request};

    #[spin_sdk::http_service]
    async fn events(request: Request) -> impl IntoResponse {
        kizuna::spin_ports::serve(
            request,
            kizuna::config::EVENTS_VARIABLES,
            async |request, ctx| super::handle(request, ctx).await,
        )
        .await
    }
}

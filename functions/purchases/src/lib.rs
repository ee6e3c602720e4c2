//! Component `purchases`: signed order webhooks from EC sites (Kizuna's
//! own Standard Webhooks format, Shopify, WooCommerce) and the orders API.
//!
//! The receivers (signatures, event identity) and ingestion live in the
//! domain crate's `purchases`; this component only routes. `handle` is
//! plain Rust the native host calls; the Spin entry point below only
//! adapts Spin's request and stores.

use http::Method;
use kizuna::Ctx;
use kizuna::auth::Scope;
use kizuna::error::ApiError;
use kizuna::http::{Request, Response, check_size, error_response, path_segments};
use kizuna::ports::{Db, Kv};
use kizuna::purchases::{WEBHOOK_BODY_LIMIT, api, receivers};

/// Routes a request under `/v1/webhooks`, `/v1/orders` or
/// `/v1/webhook-deliveries`.
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
    match segments.as_slice() {
        ["v1", "webhooks", source] => {
            if method != Method::POST {
                return Err(ApiError::MethodNotAllowed("POST"));
            }
            check_size(request.body(), WEBHOOK_BODY_LIMIT)?;
            match *source {
                "orders" => receivers::orders_webhook(request, ctx).await,
                "shopify" => receivers::shopify_webhook(request, ctx).await,
                "woocommerce" => receivers::woocommerce_webhook(request, ctx).await,
                _ => Err(ApiError::NotFound("no such webhook receiver".into())),
            }
        }
        ["v1", "orders"] => match *method {
            Method::GET => {
                authorize(Scope::OrdersRead)?;
                api::list(ctx.db, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET")),
        },
        ["v1", "orders", id] => match *method {
            Method::GET => {
                authorize(Scope::OrdersRead)?;
                api::get(ctx.db, id).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET")),
        },
        ["v1", "webhook-deliveries"] => match *method {
            Method::GET => {
                authorize(Scope::OrdersRead)?;
                api::deliveries(ctx.db, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET")),
        },
        _ => Err(ApiError::NotFound("no such route".into())),
    }
}

/// The Spin adapter.
#[cfg(target_arch = "wasm32")]
mod entrypoint {
    use spin_sdk::http::{IntoResponse, Request};

    #[spin_sdk::http_service]
    async fn purchases(request: Request) -> impl IntoResponse {
        kizuna::spin_ports::serve(
            request,
            kizuna::config::PURCHASES_VARIABLES,
            async |request, ctx| super::handle(request, ctx).await,
        )
        .await
    }
}

//! Component `purchases`: signed order webhooks from EC sites (Kizuna's
//! own Standard Webhooks format, Shopify, WooCommerce) and the orders API.
//!
//! Every receiver checks the signature over the raw body bytes before
//! anything is parsed, then hands the delivery to the domain crate's
//! `purchases::receive`. `handle` is plain Rust the native host calls;
//! the Spin entry point below only adapts Spin's request and stores.

use http::Method;
use kizuna::Ctx;
use kizuna::auth::Scope;
use kizuna::error::ApiError;
use kizuna::http::{
    Request, Response, check_size, error_response, header_str, json_response, media_type,
    path_segments,
};
use kizuna::ports::{Db, Kv};
use kizuna::purchases::receive::{Delivery, receive};
use kizuna::purchases::{Source, WEBHOOK_BODY_LIMIT, api, kizuna_format, shopify, woocommerce};
use kizuna::signatures::{self, SignatureError};

/// Routes a request under `/v1/webhooks`, `/v1/orders` or
/// `/v1/webhook-deliveries`.
pub async fn handle<D: Db, K: Kv>(request: Request, ctx: &Ctx<'_, D, K>) -> Response {
    match route(&request, ctx).await {
        Ok(response) => response,
        Err(error) => error_response(&error),
    }
}

/// A failed signature is a 401 with nothing stored; which check failed is
/// logged for the operator but not told to the sender.
fn unauthorized(source: Source, error: SignatureError) -> ApiError {
    eprintln!(
        "webhook signature refused: source={} reason={error}",
        source.as_str()
    );
    ApiError::BadSignature
}

fn required<'a>(request: &'a Request, name: &'static str) -> Result<&'a str, ApiError> {
    header_str(request.headers(), name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("missing header {name}")))
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
                "orders" => orders_webhook(request, ctx).await,
                "shopify" => shopify_webhook(request, ctx).await,
                "woocommerce" => woocommerce_webhook(request, ctx).await,
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

/// `POST /v1/webhooks/orders`: Kizuna's own format, Standard Webhooks.
async fn orders_webhook<D: Db, K: Kv>(
    request: &Request,
    ctx: &Ctx<'_, D, K>,
) -> Result<Response, ApiError> {
    let source = Source::Kizuna;
    let verified = signatures::verify_standard(
        request.headers(),
        request.body(),
        &ctx.config.orders_webhook_secrets,
        ctx.clock.now(),
    )
    .map_err(|e| unauthorized(source, e))?;
    // Parsed inside `receive`, so a malformed body is logged as rejected.
    let envelope: Result<kizuna_format::Envelope, ApiError> =
        kizuna::http::parse_json(request.body());
    let delivery = Delivery {
        source,
        // `webhook-id` is stable across retries of one message.
        event_id: verified.id.clone(),
        delivery_id: Some(verified.id),
        topic: envelope
            .as_ref()
            .map(|e| e.kind.clone())
            .unwrap_or_default(),
    };
    let region = ctx.config.default_phone_region;
    receive(ctx, &delivery, |now| {
        kizuna_format::parse(envelope?, now, region)
    })
    .await
}

/// `POST /v1/webhooks/shopify`.
async fn shopify_webhook<D: Db, K: Kv>(
    request: &Request,
    ctx: &Ctx<'_, D, K>,
) -> Result<Response, ApiError> {
    let source = Source::Shopify;
    signatures::verify_shopify(
        request.headers(),
        request.body(),
        &ctx.config.shopify_webhook_secrets,
    )
    .map_err(|e| unauthorized(source, e))?;
    let topic = required(request, "x-shopify-topic")?.to_owned();
    let webhook_id = header_str(request.headers(), "x-shopify-webhook-id").map(str::to_owned);
    // One merchant action shares its event id across deliveries; without
    // it, the webhook id (stable across retries) identifies the event.
    let event_id = header_str(request.headers(), "x-shopify-event-id")
        .map(str::to_owned)
        .or(webhook_id.clone())
        .ok_or_else(|| ApiError::BadRequest("missing header x-shopify-event-id".into()))?;
    let delivery = Delivery {
        source,
        event_id,
        delivery_id: webhook_id,
        topic: topic.clone(),
    };
    let (currency, region) = (ctx.config.shop_currency, ctx.config.default_phone_region);
    receive(ctx, &delivery, |now| {
        shopify::parse(&topic, request.body(), currency, now, region)
    })
    .await
}

/// `POST /v1/webhooks/woocommerce`.
async fn woocommerce_webhook<D: Db, K: Kv>(
    request: &Request,
    ctx: &Ctx<'_, D, K>,
) -> Result<Response, ApiError> {
    let source = Source::WooCommerce;
    // WooCommerce pings a new webhook's URL unsigned, form-encoded
    // (`webhook_id=…`), when it is saved: acknowledge, store nothing.
    if media_type(request.headers()).as_deref() == Some("application/x-www-form-urlencoded")
        && request.body().starts_with(b"webhook_id=")
        && header_str(request.headers(), "x-wc-webhook-signature").is_none()
    {
        return Ok(json_response(
            http::StatusCode::OK,
            &serde_json::json!({ "status": "ping" }),
        ));
    }
    signatures::verify_woocommerce(
        request.headers(),
        request.body(),
        &ctx.config.woocommerce_webhook_secrets,
    )
    .map_err(|e| unauthorized(source, e))?;
    let topic = required(request, "x-wc-webhook-topic")?.to_owned();
    let delivery_id = header_str(request.headers(), "x-wc-webhook-delivery-id").map(str::to_owned);
    // WooCommerce has no event id: one order state (id and modification
    // time) is one event, whichever delivery carries it.
    let event_id = woocommerce::event_id(request.body())
        .or(delivery_id.clone())
        .ok_or_else(|| {
            ApiError::BadRequest("the payload has no order id and no delivery id".into())
        })?;
    let delivery = Delivery {
        source,
        event_id,
        delivery_id,
        topic: topic.clone(),
    };
    let region = ctx.config.default_phone_region;
    receive(ctx, &delivery, |now| {
        woocommerce::parse(&topic, request.body(), now, region)
    })
    .await
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

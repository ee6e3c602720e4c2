//! The three webhook receivers: each verifies its signature over the raw
//! body bytes before anything is parsed, works out the delivery's event
//! identity from the source's headers (the de-duplication key), and hands
//! the payload to [`receive`].

use super::receive::{Delivery, receive};
use super::{Source, auth_failures, kizuna_format, shopify, woocommerce};
use crate::Ctx;
use crate::error::ApiError;
use crate::http::{Request, Response, header_str, json_response, media_type};
use crate::ports::{Db, Kv};
use crate::signatures::{self, SignatureError};

/// A failed signature is a 401 that stores nothing of the delivery;
/// which check failed is counted for the operator (see `auth_failures`)
/// but not told to the sender.
async fn unauthorized<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    source: Source,
    request: &Request,
    error: SignatureError,
) -> ApiError {
    eprintln!(
        "webhook signature refused: source={} reason={}",
        source.as_str(),
        error.reason()
    );
    auth_failures::record(ctx.db, source, &error, request.body(), ctx.clock.now()).await;
    ApiError::BadSignature
}

fn required<'a>(request: &'a Request, name: &'static str) -> Result<&'a str, ApiError> {
    header_str(request.headers(), name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("missing header {name}")))
}

/// `POST /v1/webhooks/orders`: Kizuna's own format, Standard Webhooks.
pub async fn orders_webhook<D: Db, K: Kv>(
    request: &Request,
    ctx: &Ctx<'_, D, K>,
) -> Result<Response, ApiError> {
    let source = Source::Kizuna;
    let verified = match signatures::verify_standard(
        request.headers(),
        request.body(),
        &ctx.config.orders_webhook_secrets,
        ctx.clock.now(),
    ) {
        Ok(verified) => verified,
        Err(e) => return Err(unauthorized(ctx, source, request, e).await),
    };
    // Parsed inside `receive`, so a malformed body is logged as rejected.
    let envelope: Result<kizuna_format::Envelope, ApiError> =
        crate::http::parse_json(request.body());
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
pub async fn shopify_webhook<D: Db, K: Kv>(
    request: &Request,
    ctx: &Ctx<'_, D, K>,
) -> Result<Response, ApiError> {
    let source = Source::Shopify;
    if let Err(e) = signatures::verify_shopify(
        request.headers(),
        request.body(),
        &ctx.config.shopify_webhook_secrets,
    ) {
        return Err(unauthorized(ctx, source, request, e).await);
    }
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
pub async fn woocommerce_webhook<D: Db, K: Kv>(
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
    if let Err(e) = signatures::verify_woocommerce(
        request.headers(),
        request.body(),
        &ctx.config.woocommerce_webhook_secrets,
    ) {
        return Err(unauthorized(ctx, source, request, e).await);
    }
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
    let consent_key = ctx.config.woocommerce_consent_meta_key.as_deref();
    receive(ctx, &delivery, |now| {
        woocommerce::parse(&topic, request.body(), now, region, consent_key)
    })
    .await
}

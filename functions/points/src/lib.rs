//! Component `points`: the loyalty-points API (balances, ledger, award,
//! redeem, adjust, cancel, program rules, liability, expiry sweep).
//! Earning from orders happens in the `purchases` component's
//! transaction, through the domain crate; this component only adapts
//! HTTP to `kizuna::points::api`.

use http::Method;
use kizuna::Ctx;
use kizuna::auth::Scope;
use kizuna::error::ApiError;
use kizuna::http::{Request, Response, error_response, path_segments};
use kizuna::points::api;
use kizuna::ports::{Db, Kv};

/// Routes a request under `/v1/points`.
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
        ["v1", "points", "program"] => match *method {
            Method::GET => {
                authorize(Scope::PointsRead)?;
                api::get_program(ctx.db).await
            }
            Method::PUT => {
                let actor = authorize(Scope::PointsAdmin)?;
                api::put_program(ctx, &actor, request).await
            }
            Method::PATCH => {
                let actor = authorize(Scope::PointsAdmin)?;
                api::patch_program(ctx, &actor, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET, PUT, PATCH")),
        },
        ["v1", "points", "liability"] => match *method {
            Method::GET => {
                authorize(Scope::PointsRead)?;
                kizuna::http::takes_no_query(request)?;
                api::liability(ctx).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET")),
        },
        [
            "v1",
            "points",
            action @ ("award" | "redeem" | "adjust" | "expire-due"),
        ] => {
            if method != Method::POST {
                return Err(ApiError::MethodNotAllowed("POST"));
            }
            match *action {
                "award" => api::award(ctx, &authorize(Scope::PointsAward)?, request).await,
                "redeem" => api::redeem(ctx, &authorize(Scope::PointsRedeem)?, request).await,
                "adjust" => api::adjust(ctx, &authorize(Scope::PointsAdmin)?, request).await,
                _ => api::expire_due(ctx, &authorize(Scope::PointsAdmin)?).await,
            }
        }
        ["v1", "points", "entries", entry_id, "cancel"] => match *method {
            Method::POST => {
                let actor = authorize(Scope::PointsAdmin)?;
                api::cancel_earn(ctx, &actor, entry_id, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("POST")),
        },
        ["v1", "points", contact_id] => match *method {
            Method::GET => {
                authorize(Scope::PointsRead)?;
                api::balance(ctx, contact_id).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET")),
        },
        ["v1", "points", contact_id, "ledger"] => match *method {
            Method::GET => {
                authorize(Scope::PointsRead)?;
                api::ledger_page(ctx.db, contact_id, request).await
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
    async fn points(request: Request) -> impl IntoResponse {
        kizuna::spin_ports::serve(
            request,
            kizuna::config::POINTS_VARIABLES,
            async |request, ctx| super::handle(request, ctx).await,
        )
        .await
    }
}

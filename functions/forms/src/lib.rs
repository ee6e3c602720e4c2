//! Component `forms`: the public side of lead capture. Landing-page form
//! posts (with CORS preflight), the list of forms and each one's
//! settings, and the signed
//! unsubscribe link (a confirmation page, and RFC 8058 one-click). The
//! staff contact API is the `contacts` component; the two share only the
//! domain crate and the database.
//!
//! `handle` is the whole component as a plain async function over
//! `http::Request<Bytes>` and the domain crate's ports: the native test
//! host calls it directly, and the Spin entry point below is only an
//! adapter that builds those from Spin's request and stores.

use http::Method;
use kizuna::Ctx;
use kizuna::auth::Scope;
use kizuna::error::ApiError;
use kizuna::forms;
use kizuna::http::{Request, Response, error_response, path_segments};
use kizuna::ports::{Db, Kv};

/// Routes `/v1/forms` and the requests under it.
pub async fn handle<D: Db, K: Kv>(request: Request, ctx: &Ctx<'_, D, K>) -> Response {
    match route(&request, ctx).await {
        Ok(response) => response,
        // A refused form post: a browser sees a page (or the form's error
        // URL), and a script on an allowed origin can read why.
        Err(error) => match form_post_id(&request) {
            Some(form_id) => forms::refusal(ctx, &form_id, &request, &error).await,
            None => error_response(&error),
        },
    }
}

/// The form id of a `POST /v1/forms/{form_id}`, if this is one.
fn form_post_id(request: &Request) -> Option<String> {
    if request.method() != Method::POST {
        return None;
    }
    let form_id = request.uri().path().strip_prefix("/v1/forms/")?;
    forms::parse_form_id(form_id.trim_end_matches('/')).ok()
}

async fn route<D: Db, K: Kv>(request: &Request, ctx: &Ctx<'_, D, K>) -> Result<Response, ApiError> {
    let segments = path_segments(request)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = request.method();
    match segments.as_slice() {
        ["v1", "forms"] => {
            ctx.config
                .api_keys
                .authorize(request.headers(), Scope::FormsAdmin)?;
            match *method {
                Method::GET => forms::list_forms(ctx.db, request).await,
                _ => Err(ApiError::MethodNotAllowed("GET")),
            }
        }
        ["v1", "forms", "unsubscribe"] => match *method {
            Method::POST => kizuna::privacy::unsubscribe_request(ctx, request).await,
            Method::GET => kizuna::privacy::unsubscribe_page(ctx, request),
            _ => Err(ApiError::MethodNotAllowed("GET, POST")),
        },
        ["v1", "forms", form_id] => {
            let form_id = forms::parse_form_id(form_id)?;
            match *method {
                Method::POST => forms::submit(ctx, &form_id, request).await,
                Method::OPTIONS => forms::preflight(ctx, &form_id, request).await,
                _ => Err(ApiError::MethodNotAllowed("POST, OPTIONS")),
            }
        }
        ["v1", "forms", form_id, "settings"] => {
            let form_id = forms::parse_form_id(form_id)?;
            let actor = ctx
                .config
                .api_keys
                .authorize(request.headers(), Scope::FormsAdmin)?;
            match *method {
                Method::GET => forms::get_settings(ctx, &form_id).await,
                Method::PUT => forms::put_settings(ctx, &actor, &form_id, request).await,
                Method::PATCH => forms::patch_settings(ctx, &actor, &form_id, request).await,
                _ => Err(ApiError::MethodNotAllowed("GET, PUT, PATCH")),
            }
        }
        _ => Err(ApiError::NotFound("no such route".into())),
    }
}

/// The Spin adapter: Spin request and stores in, `handle` in the middle.
#[cfg(target_arch = "wasm32")]
mod entrypoint {
    use spin_sdk::http::{IntoResponse, Request};

    #[spin_sdk::http_service]
    async fn forms(request: Request) -> impl IntoResponse {
        kizuna::spin_ports::serve(
            request,
            kizuna::config::FORMS_VARIABLES,
            async |request, ctx| super::handle(request, ctx).await,
        )
        .await
    }
}

//! Component `contacts`: the staff contact API (create-or-update, look-ups,
//! tags, interactions, timeline, consent, export and erasure), `/healthz`,
//! and the problem-document 404 for paths no component claims. Public
//! form posts are the `forms` component.
//!
//! `handle` is the whole component as a plain async function over
//! `http::Request<Bytes>` and the domain crate's ports: the native test
//! host calls it directly, and the Spin entry point below is only an
//! adapter that builds those from Spin's request and stores.

use http::Method;
use kizuna::Ctx;
use kizuna::auth::{Actor, Scope};
use kizuna::contacts_api;
use kizuna::error::ApiError;
use kizuna::http::{Request, Response, error_response, path_segments};
use kizuna::ids::ContactId;
use kizuna::ports::{Db, Kv};

/// Routes a request under `/v1/contacts`, `/healthz`, and any path no
/// other component claims (a problem document, not Spin's empty 404).
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
    let keys = &ctx.config.api_keys;
    let authorize =
        |scope: Scope| -> Result<Actor, ApiError> { keys.authorize(request.headers(), scope) };
    let contact_id = |text: &str| -> Result<String, ApiError> {
        ContactId::parse(text)
            .map(|id| id.as_str().to_owned())
            .ok_or_else(contacts_api::not_found)
    };
    match segments.as_slice() {
        // Readiness for load balancers: no key, no secrets.
        ["healthz"] => match *method {
            Method::GET => Ok(kizuna::http::json_response(
                http::StatusCode::OK,
                &kizuna::db::health(ctx.db).await?,
            )),
            _ => Err(ApiError::MethodNotAllowed("GET")),
        },
        ["v1", "contacts"] => match *method {
            Method::GET => {
                authorize(Scope::ContactsRead)?;
                contacts_api::list(ctx, request).await
            }
            Method::POST => {
                let actor = authorize(Scope::ContactsWrite)?;
                contacts_api::create_or_update(ctx, &actor, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET, POST")),
        },
        ["v1", "contacts", id] => match *method {
            Method::GET => {
                authorize(Scope::ContactsRead)?;
                contacts_api::get(ctx, &contact_id(id)?).await
            }
            Method::PATCH => {
                let actor = authorize(Scope::ContactsWrite)?;
                contacts_api::patch(ctx, &actor, &contact_id(id)?, request).await
            }
            Method::DELETE => {
                let actor = authorize(Scope::ContactsErase)?;
                contacts_api::erase(ctx, &actor, &contact_id(id)?).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET, PATCH, DELETE")),
        },
        ["v1", "contacts", id, "tags", tag] => {
            let actor = authorize(Scope::ContactsWrite)?;
            let present = match *method {
                Method::PUT => true,
                Method::DELETE => false,
                _ => return Err(ApiError::MethodNotAllowed("PUT, DELETE")),
            };
            contacts_api::set_tag(ctx, &actor, &contact_id(id)?, tag, present, request).await
        }
        ["v1", "contacts", id, "interactions"] => match *method {
            Method::POST => {
                let actor = authorize(Scope::ContactsWrite)?;
                contacts_api::add_interaction(ctx, &actor, &contact_id(id)?, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("POST")),
        },
        ["v1", "contacts", id, "interactions", interaction_id] => match *method {
            Method::PATCH => {
                let actor = authorize(Scope::ContactsWrite)?;
                contacts_api::update_interaction(
                    ctx,
                    &actor,
                    &contact_id(id)?,
                    interaction_id,
                    request,
                )
                .await
            }
            _ => Err(ApiError::MethodNotAllowed("PATCH")),
        },
        ["v1", "contacts", id, "timeline"] => match *method {
            Method::GET => {
                authorize(Scope::ContactsRead)?;
                contacts_api::timeline_page(ctx.db, &contact_id(id)?, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET")),
        },
        ["v1", "contacts", id, "consents"] => match *method {
            Method::POST => {
                let actor = authorize(Scope::ContactsWrite)?;
                contacts_api::change_consent(ctx, &actor, &contact_id(id)?, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("POST")),
        },
        ["v1", "contacts", id, "unsubscribe-link"] => match *method {
            Method::GET => {
                authorize(Scope::ContactsRead)?;
                contacts_api::unsubscribe_link(ctx, &contact_id(id)?).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET")),
        },
        ["v1", "contacts", id, "export"] => match *method {
            Method::GET => {
                authorize(Scope::ContactsRead)?;
                contacts_api::export(ctx, &contact_id(id)?, request).await
            }
            _ => Err(ApiError::MethodNotAllowed("GET")),
        },
        _ => Err(ApiError::NotFound("no such route".into())),
    }
}

/// The Spin adapter: Spin request and stores in, `handle` in the middle.
#[cfg(target_arch = "wasm32")]
mod entrypoint {
    use spin_sdk::http::{IntoResponse, Request};

    #[spin_sdk::http_service]
    async fn contacts(request: Request) -> impl IntoResponse {
        kizuna::spin_ports::serve(
            request,
            kizuna::config::CONTACTS_VARIABLES,
            async |request, ctx| super::handle(request, ctx).await,
        )
        .await
    }
}

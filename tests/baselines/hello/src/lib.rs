//! bench-spin's first baseline: a Spin component that answers every
//! request `200 hello` without touching a store, so its figures are what
//! Spin itself costs per request (accept, instantiate, call, respond).
//! Kizuna's read routes are compared with it.

#[cfg(target_arch = "wasm32")]
mod entrypoint {
    use spin_sdk::http::{IntoResponse, Request};

    #[spin_sdk::http_service]
    async fn hello(_request: Request) -> impl IntoResponse {
        "hello"
    }
}

//! The gateway's admin HTTP endpoints: `/healthz`, `/readyz`, `/api/stats`.

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::server::Gateway;

pub fn router(gateway: Gateway) -> Router {
    let ready = gateway.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "broker link down")
                    }
                }
            }),
        )
        .route(
            "/api/stats",
            get(move || {
                let stats = gateway.stats();
                async move { Json(stats) }
            }),
        )
}

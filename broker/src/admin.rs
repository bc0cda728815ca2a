//! The broker's admin HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, `/api/stats`.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use server_kit::admin_http::AdminHttpStats;

use crate::metrics;
use crate::server::Broker;
use crate::stats::StatsSnapshot;

/// The routes; `admin_http` is what the admin server itself counts (served in `/metrics`).
pub fn router(broker: Broker, admin_http: Arc<AdminHttpStats>) -> Router {
    let registry = Arc::new(metrics::registry(broker.clone(), admin_http));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let response = server_kit::metrics::scrape(&registry);
                async move { response }
            }),
        )
        .route(
            "/api/stats",
            get(move || {
                let broker = broker.clone();
                async move { Json::<StatsSnapshot>(broker.stats()) }
            }),
        )
}

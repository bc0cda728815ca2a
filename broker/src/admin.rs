//! The broker's admin HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, `/api/stats`.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};

use crate::metrics;
use crate::server::Broker;
use crate::stats::StatsSnapshot;

pub fn router(broker: Broker) -> Router {
    let registry = Arc::new(metrics::registry(broker.clone()));
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

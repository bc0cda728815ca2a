//! The broker's admin HTTP endpoints: `/healthz`, `/readyz`, `/api/stats`.

use axum::routing::get;
use axum::{Json, Router};

use crate::server::Broker;
use crate::stats::StatsSnapshot;

pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/api/stats",
            get(move || {
                let broker = broker.clone();
                async move { Json::<StatsSnapshot>(broker.stats()) }
            }),
        )
}

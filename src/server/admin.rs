//! The admin listener (`--admin-listen`): what probes and scrapers use, which can present neither
//! a client certificate nor a token, so it is plain TCP with no authentication. It serves no tree
//! contents:
//!
//! - `GET /metrics`: the server's metrics (see [`crate::metrics`]), in OpenMetrics when the
//!   scraper asks for it and in the classic Prometheus text format otherwise;
//! - `grpc.health.v1.Health` over HTTP/2: the same serving status as the gRPC port (Kubernetes'
//!   native gRPC probes; a worker is NOT_SERVING until its model is loaded);
//! - `GET /`: a line saying what is here.
//!
//! Bind it where only the cluster reaches it (a pod's port that no Service exposes outside).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tonic::transport::Server;

use super::{conn, with_grace, ServeResult};

/// Connections to the admin port close after this long without traffic (a scraper reconnects).
pub const ADMIN_IDLE: Duration = Duration::from_secs(120);

/// Serves `registry` and `health` on `listener` until `shutdown` resolves.
pub async fn serve_admin<H>(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: tonic_health::pb::health_server::HealthServer<H>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ServeResult
where
    H: tonic_health::pb::health_server::Health,
{
    use axum::http::header::{ACCEPT, CONTENT_TYPE};
    use axum::routing::get;
    // OpenMetrics for scrapers that ask for it (Prometheus does), the classic text format for
    // everyone else (curl, promtool).
    let metrics = move |headers: axum::http::HeaderMap| {
        let registry = registry.clone();
        async move {
            let openmetrics = headers
                .get_all(ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            if openmetrics {
                (
                    [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    crate::metrics::encode(&registry),
                )
            } else {
                (
                    [(CONTENT_TYPE, crate::metrics::CLASSIC_CONTENT_TYPE)],
                    crate::metrics::encode_classic(&registry),
                )
            }
        }
    };
    let router = tonic::service::Routes::new(health)
        .into_axum_router()
        .route("/metrics", get(metrics))
        .route(
            "/",
            get(|| async {
                "hch admin: GET /metrics (Prometheus), grpc.health.v1.Health (probes)\n"
            }),
        )
        // Nothing else: not the coordinator's or the worker's services (a gRPC client sees
        // UNIMPLEMENTED), not a tree's contents.
        .fallback(|headers: axum::http::HeaderMap| async move {
            use axum::response::IntoResponse;
            let message = "not here: the admin port serves GET /metrics and grpc.health.v1 only";
            let grpc = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"));
            if grpc {
                tonic::Status::unimplemented(message).into_http::<axum::body::Body>()
            } else {
                (axum::http::StatusCode::NOT_FOUND, format!("{message}\n")).into_response()
            }
        });
    with_grace(shutdown, |signal| {
        Server::builder()
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming_shutdown(conn::incoming(listener, ADMIN_IDLE, None), signal)
    })
    .await
}

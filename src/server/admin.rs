//! The admin listener (`--admin-listen`): what probes and scrapers use, which can present neither
//! a client certificate nor a token, so it is plain TCP with no authentication. It serves no tree
//! contents unless the operator turns the viewer on:
//!
//! - `GET /metrics`: the server's metrics (see [`crate::metrics`]), in OpenMetrics when the
//!   scraper asks for it and in the classic Prometheus text format otherwise;
//! - `grpc.health.v1.Health` over HTTP/2: the same serving status as the gRPC port (Kubernetes'
//!   native gRPC probes; a worker is NOT_SERVING until its model is loaded);
//! - `GET /`: a line saying what is here;
//! - with `--admin-viewer` on a coordinator, the tree viewer: `GET /trees` (one self-contained
//!   page, `viewer.html`), `GET /api/trees` (the recent trees) and `GET /api/trees/{id}?since=N`
//!   (one tree and its node events from the N-th on; see [`crate::coordinator::viewer`]).
//!
//! Bind it where only the cluster reaches it (a pod's port that no Service exposes outside).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;

use crate::coordinator::viewer::Viewer;
use tokio::net::TcpListener;
use tonic::transport::Server;

use super::{conn, with_grace, ServeResult};

/// Connections to the admin port close after this long without traffic (a scraper reconnects).
pub const ADMIN_IDLE: Duration = Duration::from_secs(120);

/// The viewer's page: no build step, no external resource.
const VIEWER_PAGE: &str = include_str!("viewer.html");

/// What the page may do: run its own inline script and style, and fetch from this port only.
const VIEWER_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
                          style-src 'unsafe-inline'; connect-src 'self'; img-src data:";

/// Serves `registry` and `health` (and the tree viewer, if given) on `listener` until
/// `shutdown` resolves.
pub async fn serve_admin<H>(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: tonic_health::pb::health_server::HealthServer<H>,
    viewer: Option<Arc<Viewer>>,
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
    let index = if viewer.is_some() {
        "hch admin: GET /metrics (Prometheus), grpc.health.v1.Health (probes), GET /trees (the \
         tree viewer)\n"
    } else {
        "hch admin: GET /metrics (Prometheus), grpc.health.v1.Health (probes)\n"
    };
    let mut router = tonic::service::Routes::new(health)
        .into_axum_router()
        .route("/metrics", get(metrics))
        .route("/", get(move || async move { index }));
    if let Some(viewer) = viewer {
        router = router.merge(viewer_routes(viewer));
    }
    let router = router
        // Nothing else: not the coordinator's or the worker's services (a gRPC client sees
        // UNIMPLEMENTED), not a tree's contents.
        .fallback(|headers: axum::http::HeaderMap| async move {
            use axum::response::IntoResponse;
            let message =
                "not here: the admin port serves GET /metrics, grpc.health.v1 and, when the \
                           viewer is on, GET /trees";
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
    serve_router(listener, router, shutdown).await
}

/// The viewer's page and its JSON endpoints.
fn viewer_routes(viewer: Arc<Viewer>) -> axum::Router {
    use axum::extract::{Path, RawQuery};
    use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    let json = |status: StatusCode, value: serde_json::Value| {
        (
            status,
            [
                (CONTENT_TYPE, "application/json"),
                (CACHE_CONTROL, "no-store"),
            ],
            value.to_string(),
        )
            .into_response()
    };
    let list = {
        let viewer = viewer.clone();
        move || {
            let viewer = viewer.clone();
            async move { json(StatusCode::OK, viewer.list()) }
        }
    };
    let tree = move |Path(id): Path<String>, RawQuery(query): RawQuery| {
        let viewer = viewer.clone();
        async move {
            let since = match since(query.as_deref()) {
                Ok(since) => since,
                Err(message) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({ "error": message }),
                    )
                }
            };
            match viewer.tree(&id, since) {
                Some(tree) => json(StatusCode::OK, tree),
                None => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({
                        "error": format!(
                            "no tree {id:?} among the {} most recent",
                            viewer.config().trees
                        )
                    }),
                ),
            }
        }
    };
    axum::Router::new()
        .route(
            "/trees",
            get(|| async {
                (
                    [
                        (CONTENT_TYPE, "text/html; charset=utf-8"),
                        (CONTENT_SECURITY_POLICY, VIEWER_CSP),
                    ],
                    VIEWER_PAGE,
                )
            }),
        )
        .route("/api/trees", get(list))
        .route("/api/trees/{id}", get(tree))
}

/// The `since` of a tree request's query string (0 when absent).
fn since(query: Option<&str>) -> Result<usize, String> {
    let Some(query) = query else {
        return Ok(0);
    };
    let mut since = 0;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since", n)) => {
                since = n.parse().map_err(|_| {
                    format!("since={n:?}: expected the number of events already read")
                })?;
            }
            _ => return Err(format!("{pair:?}: the only parameter is since=N")),
        }
    }
    Ok(since)
}

async fn serve_router(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> ServeResult {
    with_grace(shutdown, |signal| {
        Server::builder()
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming_shutdown(conn::incoming(listener, ADMIN_IDLE, None), signal)
    })
    .await
}

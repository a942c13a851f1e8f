//! The HTTP node: guest routes, the KServe V2 inference protocol, health
//! and metrics, over hyper through axum. Every request is authenticated,
//! admitted within its tenant's limits, charged to its tenant, and tagged
//! with a request id; guests and models run only through the `Runtime`.

mod admin;
mod admission;
pub mod auth;
mod error;
mod guest_route;
mod kserve;
mod metrics;

use crate::deploy::Deployments;
use crate::node::{Node, Tenant};
use admission::{TenantGate, Turn};
use axum::Router;
use axum::body::HttpBody as _;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use error::ApiError;
use metrics::NodeMetrics;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tracing::Instrument;

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler shares.
pub struct Server {
    node: Arc<Node>,
    deployments: Arc<Deployments>,
    gates: HashMap<String, TenantGate>,
    metrics: NodeMetrics,
    /// False once shutdown has begun: `/readyz` then tells load balancers
    /// to send no more.
    accepting: AtomicBool,
}

type Shared = State<Arc<Server>>;

/// A request's id, as the handlers see it.
#[derive(Clone)]
struct RequestId(Arc<str>);

/// Whom a response is charged to, set by the handler that knew.
#[derive(Clone, Default)]
struct Charge {
    tenant: String,
    module: String,
}

impl Server {
    pub fn new(node: Arc<Node>, deployments: Arc<Deployments>) -> Arc<Server> {
        let gates = node.tenants().map(|t| (t.id.clone(), TenantGate::new(&t.limits))).collect();
        Arc::new(Server { node, deployments, gates, metrics: NodeMetrics::new(), accepting: AtomicBool::new(true) })
    }

    /// Takes a turn for a request of `tenant` and reads its body within
    /// the tenant's limits, counting the bytes received.
    async fn admit(
        &self,
        tenant: &Tenant,
        body: Body,
        headers: &HeaderMap,
        request_id: &str,
    ) -> Result<(Turn, Bytes), ApiError> {
        let Some(gate) = self.gates.get(&tenant.id) else {
            tracing::error!(tenant = %tenant.id, "a tenant has no admission gate");
            return Err(admission::drained(body, ApiError::internal(request_id, "the node is misconfigured")).await);
        };
        let (turn, body) = admission::admit_request(gate, body, headers, tenant.limits.max_body_bytes).await?;
        self.metrics.received(&tenant.id, body.len() as u64);
        Ok((turn, body))
    }
}

/// The node's routes, with no socket bound: the caller serves them.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/t/{tenant}/{module}", any(guest_route::call))
        .route("/t/{tenant}/{module}/", any(guest_route::call_with_path))
        .route("/t/{tenant}/{module}/{*rest}", any(guest_route::call_with_path))
        .merge(kserve::routes())
        .merge(admin::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&server), observe))
        .with_state(server)
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and lets requests in flight finish within the node's grace
/// period. Returns whether they all finished.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<bool> {
    let grace = std::time::Duration::from_millis(server.node.settings.shutdown_grace_ms);
    let (begun_tx, begun_rx) = tokio::sync::oneshot::channel();
    let draining = Arc::clone(&server);
    let app = router(server);
    let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        draining.accepting.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: no new connections; waiting up to {grace:?} for requests in flight");
        let _ = begun_tx.send(());
    });
    let mut serving = std::pin::pin!(serving.into_future());
    tokio::select! {
        result = &mut serving => result.map(|()| true),
        _ = begun_rx => match tokio::time::timeout(grace, serving).await {
            Ok(result) => result.map(|()| true),
            Err(_) => {
                tracing::warn!("requests still in flight after {grace:?}; stopping anyway");
                Ok(false)
            }
        },
    }
}

/// Tags each request with an id, logs it, and counts it.
async fn observe(State(server): Shared, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    request.extensions_mut().insert(RequestId(Arc::from(id.as_str())));
    let span = tracing::info_span!("request", id = %id);
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    if let Some(charge) = response.extensions().get::<Charge>() {
        let sent = response.body().size_hint().exact().unwrap_or(0);
        server.metrics.request(&charge.tenant, &charge.module, status.as_u16(), elapsed, sent);
        tracing::info!(
            parent: &span, %method, %path, status = status.as_u16(), tenant = %charge.tenant,
            module = %charge.module, elapsed_ms = %format_args!("{:.1}", elapsed.as_secs_f64() * 1e3), "answered"
        );
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Sets whom `response` is charged to.
fn charged(tenant: &str, module: &str, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(Charge { tenant: tenant.to_owned(), module: module.to_owned() });
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(server): Shared) -> Response {
    if server.accepting.load(Ordering::Relaxed) {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics_text(State(server): Shared) -> Response {
    let load = server.gates.iter().map(|(tenant, gate)| (tenant.clone(), gate.running(), gate.waiting()));
    server.metrics.set_load(server.node.runtime.live_instances(), load);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], server.metrics.encode()).into_response()
}

async fn not_found() -> Response {
    charged("", "", ApiError::not_found("no such endpoint"))
}

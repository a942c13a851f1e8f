//! The HTTP node: guest routes, the KServe V2 inference protocol, health
//! and metrics, and the pages a person opens in a browser, over hyper
//! through axum, in plain HTTP or TLS. Every
//! request is authenticated, admitted within its tenant's limits, charged
//! to its tenant, and tagged with a request id; guests and models run only
//! through the `Runtime`.

pub mod admin;
mod admission;
pub mod auth;
pub mod catalog;
mod error;
mod extract;
mod guest_route;
pub mod kserve;
mod metrics;
mod process_metrics;
pub mod status;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod ui;

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
use hyper_util::rt::TokioIo;
use mantle_node::{Node, Tenant};
use metrics::NodeMetrics;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tracing::Instrument;

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The most a request's line and headers may take, together. Common
/// proxies stop at 8–16 KiB; hyper itself refuses, without a body, header
/// blocks past about 400 KiB.
pub const MAX_HEADER_BYTES: usize = 32 << 10;

/// What every handler shares.
pub struct Server {
    node: Arc<Node>,
    gates: HashMap<String, TenantGate>,
    metrics: NodeMetrics,
    /// False once a stop was asked for.
    accepting: AtomicBool,
}

type Shared = State<Arc<Server>>;

/// A request's id, as the handlers see it.
#[derive(Clone)]
struct RequestId(Arc<str>);

/// The operator's request a response answers: its method and route.
#[derive(Clone)]
struct AdminOperation(String);

/// Whom a response is charged to, set by the handler that knew.
#[derive(Clone, Default)]
struct Charge {
    tenant: String,
    module: String,
}

impl Server {
    pub fn new(node: Arc<Node>) -> Arc<Server> {
        let gates = node.tenants().map(|t| (t.id.clone(), TenantGate::new(&t.limits))).collect();
        Arc::new(Server { node, gates, metrics: NodeMetrics::new(), accepting: AtomicBool::new(true) })
    }

    /// Whether the node was asked to stop: from that moment it tells load
    /// balancers to send no more, and closes connections after answering.
    fn is_draining(&self) -> bool {
        !self.accepting.load(Ordering::Relaxed)
    }

    /// Whether load balancers should send the node traffic, and if not,
    /// why: it is draining, or a followed tag has not been deployed yet.
    fn readiness(&self) -> Result<(), String> {
        if self.is_draining() {
            return Err("shutting down".to_owned());
        }
        self.node.follow_pending().map_or(Ok(()), Err)
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
        .route("/t", get(catalog::catalog))
        .route("/t/{tenant}/{module}", any(guest_route::call))
        .route("/t/{tenant}/{module}/", any(guest_route::call_with_path))
        .route("/t/{tenant}/{module}/{*rest}", any(guest_route::call_with_path))
        .merge(kserve::routes())
        .merge(admin::routes())
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&server), observe))
        .with_state(server)
}

/// How the node was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Leave the load balancers' rotation first: answer `/readyz` with 503
    /// and go on serving for the node's `drain_ms`, then stop (SIGTERM).
    Drain,
    /// Stop accepting connections at once (SIGINT, or a second signal
    /// during a drain).
    Now,
}

/// Serves the node's routes on `listener`, over TLS when `tls` is given,
/// until a [`Stop`] arrives on `stops`; then, after the drain if one was
/// asked for, stops accepting and lets requests in flight finish within
/// the node's grace period. Returns whether they all finished.
///
/// Each connection is served by hyper with a limit on how long the request
/// line and headers may take, and the TLS handshake gets the same limit,
/// so that clients that open connections and send nothing, or a header a
/// byte at a time, are cut off.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    tls: Option<tls::TlsAcceptor>,
    mut stops: tokio::sync::mpsc::Receiver<Stop>,
) -> std::io::Result<bool> {
    let settings = &server.node.settings;
    let grace = std::time::Duration::from_millis(settings.shutdown_grace_ms);
    let drain = std::time::Duration::from_millis(settings.drain_ms);
    let header_timeout = std::time::Duration::from_millis(settings.header_read_timeout_ms);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    let app = router(Arc::clone(&server));
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut drain_ends: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most often: wait for some
                    // to be closed rather than spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(stop) = stops.recv() => {
                server.accepting.store(false, Ordering::Relaxed);
                if stop == Stop::Drain && drain_ends.is_none() && !drain.is_zero() {
                    tracing::info!("draining: /readyz answers 503; serving on for {drain:?} (signal again to stop now)");
                    drain_ends = Some(Box::pin(tokio::time::sleep(drain)));
                    continue;
                }
                break;
            }
            () = until(drain_ends.as_mut()) => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (http, tls, watcher) = (http.clone(), tls.clone(), connections.watcher());
        // The handshake runs in the connection's own task: a slow client
        // must not hold up the accept loop.
        tokio::spawn(async move {
            let served = match tls {
                None => watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await,
                Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await,
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake not finished within {header_timeout:?}");
                        return;
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting up to {grace:?} for requests in flight");
    match tokio::time::timeout(grace, connections.shutdown()).await {
        Ok(()) => Ok(true),
        Err(_) => {
            tracing::warn!("requests still in flight after {grace:?}; stopping anyway");
            Ok(false)
        }
    }
}

/// Resolves when `deadline` passes; never, when there is none.
async fn until(deadline: Option<&mut std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match deadline {
        Some(deadline) => deadline.await,
        None => std::future::pending().await,
    }
}

/// Tags each request with an id, refuses an oversized header block, and
/// logs and counts the request as its tenant's, or as the operator's.
/// Probes and scrapes (`/healthz`, `/readyz`, `/metrics`) are logged at
/// debug only.
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
    // One layer for both: each layer costs every request a boxed future.
    let mut response = match oversized_headers(&request) {
        Some(refused) => refused,
        None => next.run(request).instrument(span.clone()).await,
    };
    let elapsed = started.elapsed();
    let status = response.status();
    let elapsed_ms = format_args!("{:.1}", elapsed.as_secs_f64() * 1e3);
    if let Some(charge) = response.extensions().get::<Charge>() {
        let sent = response.body().size_hint().exact().unwrap_or(0);
        server.metrics.request(&charge.tenant, &charge.module, status.as_u16(), elapsed, sent);
        tracing::info!(
            parent: &span, %method, %path, status = status.as_u16(), tenant = %charge.tenant,
            module = %charge.module, %elapsed_ms, "answered"
        );
    } else if let Some(AdminOperation(operation)) = response.extensions().get::<AdminOperation>() {
        server.metrics.admin_request(operation, status.as_u16(), elapsed);
        tracing::info!(parent: &span, %method, %path, status = status.as_u16(), operator = true, %elapsed_ms, "answered");
    } else {
        tracing::debug!(parent: &span, %method, %path, status = status.as_u16(), %elapsed_ms, "answered");
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    if server.is_draining() {
        // A draining node closes each connection after its answer, so
        // that clients and proxies holding keep-alive connections open
        // new ones, which the load balancer sends elsewhere.
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
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
    match server.readiness() {
        Ok(()) => "ready\n".into_response(),
        Err(why) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", mantle_types::untrusted::escaped(&why))).into_response()
        }
    }
}

async fn metrics_text(State(server): Shared) -> Response {
    let load = server.gates.iter().map(|(tenant, gate)| (tenant.clone(), gate.running(), gate.waiting()));
    server.metrics.set_load(server.node.runtime.live_instances(), server.node.models_held(), load);
    server.metrics.set_follows(&server.node.follows());
    for elapsed in server.node.models().take_load_times() {
        server.metrics.model_loaded(elapsed);
    }
    // A node without a store has no deployments.
    if let Ok(deployments) = server.node.deployments() {
        server.metrics.set_deployments(&deployments);
    }
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], server.metrics.encode()).into_response()
}

async fn not_found() -> Response {
    charged("", "", ApiError::not_found("no such endpoint"))
}

async fn method_not_allowed(method: axum::http::Method) -> Response {
    charged("", "", ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("this endpoint does not take {method}")))
}

/// The refusal of a request whose header block is larger than
/// [`MAX_HEADER_BYTES`]: 431, before any handler reads it.
fn oversized_headers(request: &Request) -> Option<Response> {
    let size: usize = request.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    (size > MAX_HEADER_BYTES).then(|| {
        let message =
            format!("the request line and headers are {size} bytes; the node reads at most {MAX_HEADER_BYTES}");
        charged("", "", ApiError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, message))
    })
}

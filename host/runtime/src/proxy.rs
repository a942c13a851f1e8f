//! Components of the standard `wasi:http/proxy` world (for Spin, `wasmtime
//! serve`, wasmCloud): how one is told apart from a `mantle:edge` guest,
//! how a request record becomes its `wasi:http` incoming request, and how
//! its response is gathered within the node's limits. Their outgoing
//! requests are refused: no host is granted to a guest.

use crate::guest_output::LogTags;
use crate::state::GuestState;
use crate::{Failed, GuestError, HandleError, MAX_RESPONSE_BYTES, Request, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::future::Future;
use wasmtime::component::Component;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// The export a `wasi:http/proxy` component serves requests through, in
/// every 0.2 release of the world.
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2.";

/// Largest header block a component's `fields` may hold, the size the node
/// lets a response's headers take: wasmtime's default is twice that.
pub(crate) const FIELD_SIZE_LIMIT: usize = crate::MAX_RESPONSE_HEADER_BYTES;

/// Whether `component` exports `wasi:http/incoming-handler`: a component of
/// the standard HTTP world rather than of `mantle:edge`.
pub(crate) fn exports_incoming_handler(engine: &Engine, component: &Component) -> bool {
    component.component_type().exports(engine).any(|(name, _)| name.starts_with(INCOMING_HANDLER))
}

/// What a component's outgoing requests meet: a refusal, since the node
/// grants no host to a guest. The guest sees `HTTP-request-denied`; the
/// node's log says so once per request.
pub(crate) struct OutgoingDenied {
    tags: LogTags,
    logged: bool,
}

impl OutgoingDenied {
    pub(crate) fn new(tags: LogTags) -> Self {
        OutgoingDenied { tags, logged: false }
    }
}

type SentResponse = wasmtime_wasi_http::Result<(
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutgoingDenied {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _body_sent: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SentResponse> + Send> {
        if !std::mem::replace(&mut self.logged, true) {
            tracing::warn!(
                tenant = %self.tags.tenant, module = %self.tags.module, request_id = %self.tags.request_id,
                uri = %mantle_types::untrusted::escaped(&request.uri().to_string()),
                "refused the guest's outgoing HTTP request: no host is granted to guests"
            );
        }
        Box::new(std::future::ready(Err(wasmtime_wasi_http::Error::HttpRequestDenied)))
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.outgoing }
    }
}

/// The response a proxy component gave, or why it gave none: the outer
/// error is the instance failing, the inner one a response the node will
/// not send.
pub(crate) type Served = Result<Result<Response, HandleError>, Failed>;

/// Runs `request` through a fresh instance of the component of `pre`: its
/// handler is called, and its response is read while it runs, so that a
/// body larger than the channel between them does not stall it. The
/// answer is complete once the body is; the instance is then dropped,
/// whatever it still meant to do.
pub(crate) async fn serve(store: &mut Store<GuestState>, pre: &ProxyPre<GuestState>, request: Request) -> Served {
    let incoming = match incoming_request(request) {
        Ok(incoming) => incoming,
        Err(refused) => return Ok(Err(refused)),
    };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let proxy = pre.instantiate_async(&mut *store).await.map_err(Failed::Starting)?;
    let http = store.data_mut();
    let made = |e: wasmtime::Error| Failed::Starting(e.context("cannot hand the request to the component"));
    let incoming = http.http().new_incoming_request(Scheme::Http, incoming).map_err(made)?;
    let outparam = http.http().new_response_outparam(sender).map_err(made)?;
    let mut call = Box::pin(proxy.wasi_http_incoming_handler().call_handle(&mut *store, incoming, outparam));
    let mut returned = false;

    // First the status and headers, which the component sets once.
    let mut receiver = std::pin::pin!(receiver);
    let head = tokio::select! {
        head = &mut receiver => head.ok(),
        called = &mut call => {
            called.map_err(Failed::Running)?;
            returned = true;
            // Whatever it set, it has set by now.
            receiver.try_recv().ok()
        }
    };
    let response = match head {
        Some(Ok(response)) => response,
        Some(Err(code)) => return Ok(Err(component_error(&format!("{code:?}")))),
        None => return Ok(Err(no_response())),
    };

    // Then the body, which it may still be writing.
    let (parts, body) = response.into_parts();
    let mut gathering = std::pin::pin!(gather(body));
    let body = if returned {
        gathering.await
    } else {
        tokio::select! {
            body = &mut gathering => body,
            called = &mut call => {
                called.map_err(Failed::Running)?;
                gathering.await
            }
        }
    };
    drop(call);
    let body = match body {
        Ok(body) => body,
        Err(error) => return Ok(Err(error)),
    };
    let headers =
        parts.headers.iter().map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec())).collect();
    Ok(Ok(Response { status: parts.status.as_u16(), headers, body }))
}

/// The request record as a `wasi:http` request, its body moved, not
/// copied: the path and query the route left, and the authority from the
/// `host` header (`localhost` when it has none, as offline). A method or a
/// path that HTTP cannot carry (only `mantle run` can give one) is refused.
fn incoming_request(request: Request) -> Result<http::Request<Full<Bytes>>, HandleError> {
    let refuse = |what: &str, text: &str| {
        HandleError::Guest(GuestError::InvalidInput(format!(
            "`{}` is not {what}",
            mantle_types::untrusted::escaped(text)
        )))
    };
    let method =
        http::Method::from_bytes(request.method.as_bytes()).map_err(|_| refuse("an HTTP method", &request.method))?;
    let host = request
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .and_then(|(_, value)| http::uri::Authority::try_from(value.as_slice()).ok())
        .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
    let path_and_query =
        if request.query.is_empty() { request.path } else { format!("{}?{}", request.path, request.query) };
    let uri = http::Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(host)
        .path_and_query(path_and_query.as_str())
        .build()
        .map_err(|_| refuse("a path and query HTTP can carry", &path_and_query))?;
    let mut built = http::Request::new(Full::new(Bytes::from(request.body)));
    *built.method_mut() = method;
    *built.uri_mut() = uri;
    for (name, value) in &request.headers {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_bytes(value))
        {
            built.headers_mut().append(name, value);
        }
    }
    Ok(built)
}

/// The body, read frame by frame up to [`MAX_RESPONSE_BYTES`].
async fn gather(mut body: HyperOutgoingBody) -> Result<Vec<u8>, HandleError> {
    let mut gathered = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| component_error(&e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if gathered.len().saturating_add(data.len()) > MAX_RESPONSE_BYTES {
                return Err(HandleError::ResponseTooLarge {
                    size: gathered.len().saturating_add(data.len()),
                    limit: MAX_RESPONSE_BYTES,
                });
            }
            gathered.extend_from_slice(&data);
        }
    }
    Ok(gathered)
}

/// The component answered with a `wasi:http` error instead of a
/// response, or its body failed: its own failure, as an `internal` error
/// of a `mantle:edge` guest is (500).
fn component_error(error: &str) -> HandleError {
    HandleError::Guest(GuestError::Internal(format!("the component did not complete its response: {error}")))
}

fn no_response() -> HandleError {
    HandleError::Guest(GuestError::Internal(
        "the component returned without setting a response (response-outparam.set was never called)".to_owned(),
    ))
}

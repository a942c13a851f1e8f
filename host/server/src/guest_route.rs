//! `/t/{tenant}/{module}[/{rest}]`: one HTTP request through one of the
//! tenant's guest modules, with the guest's status, headers and body as
//! the answer.

use super::admission::drained;
use super::auth::authenticate;
use super::error::ApiError;
use super::extract::ApiPath;
use super::{RequestId, Server, Shared, charged};
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use mantle_runtime::{HandleError, Request as GuestRequest, Response as GuestResponse};
use std::sync::Arc;

/// The hop-by-hop headers: they describe one connection, not the message,
/// and are never passed on, in either direction. Headers that a message's
/// `connection` header names are hop-by-hop as well.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Request headers a guest never sees besides the hop-by-hop ones: the
/// tenant's key.
const WITHHELD: [HeaderName; 1] = [header::AUTHORIZATION];

/// Response headers a guest's answer never carries besides the hop-by-hop
/// ones: those the node sets itself, which a guest's would conflict with.
const NODE_SET: [HeaderName; 2] = [header::CONTENT_LENGTH, HeaderName::from_static("x-request-id")];

/// The header names the `connection` headers among `headers` list, in
/// lower case.
fn named_by_connection<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<String> {
    headers
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| value.split(|&b| b == b','))
        .map(|token| String::from_utf8_lossy(token).trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// Whether a header called `name` is hop-by-hop in a message whose
/// `connection` headers name `named`.
fn hop_by_hop(name: &HeaderName, named: &[String]) -> bool {
    HOP_BY_HOP.contains(name) || named.iter().any(|n| n == name.as_str())
}

pub async fn call(
    state: Shared,
    Extension(id): Extension<RequestId>,
    ApiPath((tenant, module)): ApiPath<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(state.0, id, tenant, module, String::new(), method, uri, headers, body).await
}

pub async fn call_with_path(
    state: Shared,
    Extension(id): Extension<RequestId>,
    ApiPath(params): ApiPath<Vec<(String, String)>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    handle(state.0, id, param("tenant"), param("module"), param("rest"), method, uri, headers, body).await
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    server: Arc<Server>,
    id: RequestId,
    tenant_id: String,
    module_id: String,
    rest: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let tenant = match authenticate(&server.node, &headers) {
        Ok(tenant) => tenant,
        Err(refusal) => return charged("", "", drained(body, refusal).await),
    };
    // A caller learns nothing about other tenants: the same answer whether
    // the tenant in the path exists or not.
    if tenant.id != tenant_id {
        let refusal = ApiError::forbidden(format!("this key cannot call tenant `{tenant_id}`"));
        return charged(&tenant.id, "", drained(body, refusal).await);
    }
    let Some(module) = tenant.module(&module_id) else {
        let refusal = ApiError::not_found(format!("tenant `{tenant_id}` has no module `{module_id}`"));
        return charged(&tenant.id, "", drained(body, refusal).await);
    };
    let outcome = async {
        let (_turn, body) = server.admit(&tenant, body, &headers, &id.0).await?;
        let named = named_by_connection(headers.iter().map(|(name, value)| (name.as_str(), value.as_bytes())));
        let request = GuestRequest {
            method: method.as_str().to_owned(),
            path: format!("/{rest}"),
            query: uri.query().unwrap_or_default().to_owned(),
            headers: headers
                .iter()
                .filter(|(name, _)| !WITHHELD.contains(name) && !hop_by_hop(name, &named))
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
            body: body.into(),
        };
        let (result, usage) = server.node.runtime.handle_metered(&module, request, &id.0).await;
        server.metrics.guest_time(&tenant.id, module.id(), usage.guest_time);
        server.metrics.guest_output(&tenant.id, usage.output_logged, usage.output_dropped);
        for (model, elapsed) in &usage.inferences {
            server.metrics.inference(&tenant.id, model, *elapsed);
        }
        match result {
            Ok(response) => guest_response(response, &id.0),
            Err(error) => Err(handle_error(error, &tenant.id, module.id(), &id.0)),
        }
    };
    charged(&tenant.id, module.id(), outcome.await.into_response())
}

/// The guest's answer as an HTTP response. A status outside 200–599 is a
/// failure of the guest; hop-by-hop headers and headers HTTP cannot carry
/// are dropped; a 204, 205 or 304 goes without a body.
fn guest_response(response: GuestResponse, request_id: &str) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(response.status).ok().filter(|s| (200..=599).contains(&s.as_u16()));
    let Some(status) = status else {
        tracing::warn!(status = response.status, error_id = %request_id, "the guest answered with a status outside 200-599");
        return Err(ApiError::internal(request_id, "the guest answered with an invalid status"));
    };
    let bodiless = matches!(status, StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT | StatusCode::NOT_MODIFIED);
    let body = if bodiless { Body::empty() } else { Body::from(response.body) };
    let mut answer = Response::new(body);
    *answer.status_mut() = status;
    let named = named_by_connection(response.headers.iter().map(|(name, value)| (name.as_str(), value.as_slice())));
    let (mut not_passed_on, mut unusable) = (0usize, Vec::new());
    for (name, value) in response.headers {
        let parsed = (HeaderName::try_from(name.as_str()), HeaderValue::from_bytes(&value));
        let (Ok(header), Ok(value)) = parsed else {
            unusable.push(name);
            continue;
        };
        if NODE_SET.contains(&header) || hop_by_hop(&header, &named) {
            not_passed_on += 1;
            continue;
        }
        if answer.headers_mut().try_append(header, value).is_err() {
            return Err(ApiError::internal(request_id, "the guest answered with too many headers"));
        }
    }
    // One line, however many: a guest could send thousands.
    if let Some(first) = unusable.first() {
        tracing::warn!(
            count = unusable.len(), first = %mantle_types::untrusted::escaped(first),
            "dropped response headers the guest set that HTTP cannot carry"
        );
    }
    if not_passed_on > 0 {
        tracing::debug!(not_passed_on, "dropped hop-by-hop or node-set headers from the guest's response");
    }
    Ok(answer)
}

/// The status and message a failed guest request gets. Traps and other
/// failures of the guest are logged in full under the request id, and only
/// the id reaches the client; everything the guest wrote is escaped in the
/// log (see `mantle_types::untrusted`).
fn handle_error(error: HandleError, tenant: &str, module: &str, request_id: &str) -> ApiError {
    let status = super::status::of_guest(&error);
    match &error {
        HandleError::Guest(_) => ApiError::new(status, error.guest_message().unwrap_or_default()),
        HandleError::Deadline(_) => ApiError::new(status, error.to_string()),
        HandleError::Busy(_) => {
            tracing::warn!(%tenant, %module, "cannot start a guest instance: {error}");
            ApiError::new(status, error.to_string()).retry_after(1)
        }
        HandleError::MemoryLimit { .. }
        | HandleError::Trap(_)
        | HandleError::Start(_)
        | HandleError::ResponseTooLarge { .. }
        | HandleError::HeadersTooLarge { .. } => {
            tracing::error!(%tenant, %module, error_id = %request_id, "guest failed: {error}");
            let what = match error {
                HandleError::MemoryLimit { .. } => "the guest ran out of memory",
                HandleError::ResponseTooLarge { .. } | HandleError::HeadersTooLarge { .. } => {
                    "the guest's response is larger than the node passes on"
                }
                HandleError::Start(_) => "the guest could not start",
                _ => "the guest crashed",
            };
            ApiError::internal(request_id, what)
        }
    }
}

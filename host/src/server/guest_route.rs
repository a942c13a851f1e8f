//! `/t/{tenant}/{module}[/{rest}]`: one HTTP request through one of the
//! tenant's guest modules, with the guest's status, headers and body as
//! the answer.

use super::admission::drained;
use super::auth::authenticate;
use super::error::ApiError;
use super::extract::ApiPath;
use super::{RequestId, Server, Shared, charged};
use crate::runtime::{HandleError, Request as GuestRequest, Response as GuestResponse};
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Request headers a guest never sees: the tenant's key, and those that
/// describe the connection rather than the request.
const WITHHELD: [HeaderName; 5] =
    [header::AUTHORIZATION, header::CONNECTION, header::TRANSFER_ENCODING, header::UPGRADE, header::TE];

/// Response headers the node sets itself: a guest's would conflict.
const NODE_SET: [HeaderName; 4] =
    [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION, HeaderName::from_static("x-request-id")];

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
        let request = GuestRequest {
            method: method.as_str().to_owned(),
            path: format!("/{rest}"),
            query: uri.query().unwrap_or_default().to_owned(),
            headers: headers
                .iter()
                .filter(|(name, _)| !WITHHELD.contains(name))
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
                .collect(),
            body: body.into(),
        };
        let (result, usage) = server.node.runtime.handle_metered(&module, request, &id.0).await;
        server.metrics.guest_time(&tenant.id, module.id(), usage.guest_time);
        for (model, elapsed) in &usage.inferences {
            server.metrics.inference(&tenant.id, model.name(), *elapsed);
        }
        match result {
            Ok(response) => guest_response(response, &id.0),
            Err(error) => Err(handle_error(error, &tenant.id, module.id(), &id.0)),
        }
    };
    charged(&tenant.id, module.id(), outcome.await.into_response())
}

/// The guest's answer as an HTTP response; one that HTTP cannot carry is a
/// failure of the guest.
fn guest_response(response: GuestResponse, request_id: &str) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(response.status).ok().filter(|s| s.as_u16() >= 200).ok_or_else(|| {
        tracing::warn!(status = response.status, "the guest answered with a status HTTP cannot carry");
        ApiError::internal(request_id, "the guest answered with an invalid status")
    })?;
    let mut answer = Response::new(Body::from(response.body));
    *answer.status_mut() = status;
    for (name, value) in response.headers {
        let parsed = (HeaderName::try_from(name.as_str()), HeaderValue::from_bytes(&value));
        match parsed {
            (Ok(name), Ok(value)) if !NODE_SET.contains(&name) => {
                answer.headers_mut().append(name, value);
            }
            _ => tracing::warn!(header = %name.escape_debug(), "dropped a response header the guest set"),
        }
    }
    Ok(answer)
}

/// The status and message a failed guest request gets. Traps are logged
/// in full under the request id and only the id reaches the client.
fn handle_error(error: HandleError, tenant: &str, module: &str, request_id: &str) -> ApiError {
    match error {
        HandleError::Guest(_) | HandleError::Deadline(_) => {
            let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            ApiError::new(status, error.to_string())
        }
        HandleError::Instantiate(_) => {
            tracing::warn!(%tenant, %module, "cannot start a guest instance: {error}");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is at its limit of guest instances").retry_after(1)
        }
        HandleError::MemoryLimit { .. } | HandleError::Trap(_) | HandleError::ResponseTooLarge { .. } => {
            tracing::error!(%tenant, %module, error_id = %request_id, "guest failed: {error}");
            let what = match error {
                HandleError::MemoryLimit { .. } => "the guest ran out of memory",
                HandleError::ResponseTooLarge { .. } => "the guest's response is larger than the node passes on",
                _ => "the guest crashed",
            };
            ApiError::internal(request_id, what)
        }
    }
}

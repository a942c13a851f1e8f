//! `/admin/v1/...`: the operator's API, behind its own token. Upload a
//! bundle as a new version of a tenant's deployment (and activate it), list
//! deployments, activate an earlier version, delete a deployment.

use super::auth::{bearer_token, token_matches};
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::{RequestId, Shared};
use axum::Json;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use mantle_node::deploy::DeployError;
use mantle_node::follow::FollowStatus;
use std::sync::Arc;

pub fn routes() -> axum::Router<Arc<super::Server>> {
    axum::Router::new()
        .route("/admin/v1/deployments", get(list))
        .route("/admin/v1/follows", get(follows))
        .route("/admin/v1/tenants", get(tenants))
        .route("/admin/v1/tenants/{tenant}/deployments", post(upload))
        .route("/admin/v1/tenants/{tenant}/pulls", post(pull))
        .route("/admin/v1/tenants/{tenant}/deployments/{name}", axum::routing::delete(delete))
        .route("/admin/v1/tenants/{tenant}/deployments/{name}/activate", post(activate))
        .route_layer(axum::middleware::from_fn(name_operation))
}

/// Names the operation of an answered admin request by its method and
/// route, so that `observe` logs and counts it as the operator's.
async fn name_operation(
    matched: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let operation = format!("{} {}", request.method(), matched.as_str());
    let mut response = next.run(request).await;
    response.extensions_mut().insert(super::AdminOperation(operation));
    response
}

/// Refuses a request that does not carry the operator token.
fn operator(state: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.node.settings.admin_token_sha256 else {
        return Err(ApiError::forbidden("the admin API is off: set admin_token_sha256 in the [node] table"));
    };
    let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
    let presented = bearer_token(headers)
        .map_err(unauthorized)?
        .ok_or_else(|| unauthorized("the admin API needs `Authorization: Bearer <token>`"))?;
    if token_matches(expected, presented) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "the operator token is not valid"))
    }
}

fn refused(error: DeployError) -> ApiError {
    let status = super::status::of_deploy(&error);
    // The whole chain: a refusal names the file or field at fault.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ApiError::new(status, message)
}

#[derive(serde::Deserialize)]
struct UploadQuery {
    #[serde(default = "yes")]
    activate: bool,
}

fn yes() -> bool {
    true
}

async fn upload(
    state: Shared,
    Extension(id): Extension<RequestId>,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let outcome = async {
        operator(&state, &headers)?;
        // The body is part of the load: see `Loading`.
        let _loading = mantle_node::allocator::Loading::start();
        let limit = state.node.settings.max_bundle_bytes;
        let limited = http_body_util::Limited::new(body, limit);
        let archive = limited.collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the bundle is larger than {limit} bytes"))
            } else {
                ApiError::bad_request(format!("cannot read the bundle: {e}"))
            }
        })?;
        let archive = archive.to_bytes();
        let outcome = state.node.deploy(&tenant, &archive, query.activate).await;
        drop(archive);
        outcome.map(Json).map_err(|e| {
            // The tenant is as the path gave it, and the refusal may quote the
            // bundle: both are escaped in the log.
            tracing::warn!(
                tenant = %mantle_types::untrusted::escaped(&tenant), request = %id.0,
                "deployment refused: {}", mantle_types::untrusted::escaped(&e.to_string())
            );
            refused(e)
        })
    };
    outcome.await.into_response()
}

/// A bundle for the node to fetch from a registry itself.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    /// `oci://HOST[:PORT]/REPO:TAG` or `...@sha256:DIGEST`.
    reference: String,
    /// Plain HTTP: for a registry on loopback.
    #[serde(default)]
    insecure: bool,
    username: Option<String>,
    password: Option<String>,
}

async fn pull(
    state: Shared,
    Extension(id): Extension<RequestId>,
    ApiPath(tenant): ApiPath<String>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<PullRequest>,
) -> Response {
    let outcome = async {
        operator(&state, &headers)?;
        let reference = mantle_oci::registry::parse_reference(&request.reference)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let credentials = match (request.username, request.password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            _ => return Err(ApiError::bad_request("give both username and password, or neither")),
        };
        let access = mantle_oci::registry::Access { insecure: request.insecure, credentials };
        let registry = mantle_oci::registry::Registry::new(&access);
        let _loading = mantle_node::allocator::Loading::start();
        let outcome = state.node.deploy_from(&tenant, &registry, &reference, query.activate).await;
        outcome.map(Json).map_err(|e| {
            tracing::warn!(
                tenant = %mantle_types::untrusted::escaped(&tenant), request = %id.0,
                reference = %mantle_types::untrusted::escaped(&request.reference),
                "deployment from a registry refused: {}", mantle_types::untrusted::escaped(&e.to_string())
            );
            refused(e)
        })
    };
    outcome.await.into_response()
}

/// A deployment as the operator lists it: what the store holds, and the
/// followed tags that deploy it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ListedDeployment {
    #[serde(flatten)]
    pub deployment: mantle_node::store::Deployment,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follows: Vec<FollowStatus>,
}

async fn list(state: Shared, headers: HeaderMap) -> Response {
    let outcome = operator(&state, &headers).and_then(|()| state.node.deployments().map_err(refused));
    let follows = state.node.follows();
    let listed = outcome.map(|deployments| {
        let listed: Vec<ListedDeployment> = deployments
            .into_iter()
            .map(|deployment| {
                let follows = follows
                    .iter()
                    .filter(|f| f.tenant == deployment.tenant && f.deployment.as_ref() == Some(&deployment.name))
                    .cloned()
                    .collect();
                ListedDeployment { deployment, follows }
            })
            .collect();
        Json(listed)
    });
    listed.into_response()
}

/// Every followed tag, deployed yet or not.
async fn follows(state: Shared, headers: HeaderMap) -> Response {
    operator(&state, &headers).map(|()| Json(state.node.follows())).into_response()
}

/// A tenant as the operator sees it: its limits, among them the ceilings
/// its bundles' modules are held to, and its share of guest instances.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct TenantSummary {
    pub id: String,
    pub limits: mantle_manifest::node::TenantLimits,
    pub max_instances: usize,
}

async fn tenants(state: Shared, headers: HeaderMap) -> Response {
    let outcome = operator(&state, &headers).map(|()| {
        let share = state.node.runtime.instances_per_tenant();
        let tenants: Vec<TenantSummary> = state
            .node
            .tenants()
            .map(|t| TenantSummary { id: t.id.clone(), limits: t.limits, max_instances: share })
            .collect();
        Json(tenants)
    });
    outcome.into_response()
}

#[derive(serde::Deserialize)]
struct Activation {
    version: String,
}

async fn activate(
    state: Shared,
    ApiPath((tenant, name)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiJson(activation): ApiJson<Activation>,
) -> Response {
    let outcome = async {
        operator(&state, &headers)?;
        state.node.activate(&tenant, &name, &activation.version).await.map(Json).map_err(refused)
    };
    outcome.await.into_response()
}

async fn delete(state: Shared, ApiPath((tenant, name)): ApiPath<(String, String)>, headers: HeaderMap) -> Response {
    let outcome = async {
        operator(&state, &headers)?;
        state.node.delete(&tenant, &name).await.map_err(refused)?;
        Ok::<_, ApiError>(StatusCode::NO_CONTENT)
    };
    outcome.await.into_response()
}

//! The KServe V2 inference protocol (the Open Inference Protocol of Triton,
//! KServe, MLServer and OpenVINO Model Server) over the models a tenant was
//! granted: server and model metadata, readiness, and inference.

pub mod wire;

use super::admission::drained;
use super::auth::authenticate;
use super::error::ApiError;
use super::extract::ApiPath;
use super::{RequestId, Server, Shared, charged};
use axum::Json;
use axum::body::Body;
use axum::extract::Extension;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mantle_models::{Dim, HostTensor};
use mantle_node::{HeldModel, Tenant};
use mantle_runtime::InferError;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::{InferRequest, InferResponse, OutputTensor};

pub fn routes() -> axum::Router<Arc<Server>> {
    axum::Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
}

/// The model named by a route: `{model}` and, if given, `{version}`.
#[derive(serde::Deserialize)]
struct ModelPath {
    model: String,
    version: Option<String>,
}

impl ModelPath {
    fn label(&self) -> String {
        format!("v2:{}", self.model)
    }
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "mantle",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn ready(state: Shared) -> StatusCode {
    if state.readiness().is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// A refused request, and the tenant it is charged to if one was known.
/// It carries no model label: a label per name a caller makes up would let
/// callers grow the metrics without bound.
struct Refusal {
    tenant: String,
    error: ApiError,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        charged(&self.tenant, "", self.error)
    }
}

/// The tenant calling and the granted model the path names. An ungranted
/// model and one the node does not hold get the same answer.
fn granted(server: &Server, headers: &HeaderMap, path: &ModelPath) -> Result<(Arc<Tenant>, Arc<HeldModel>), Refusal> {
    let tenant = authenticate(&server.node, headers).map_err(|error| Refusal { tenant: String::new(), error })?;
    let model = tenant.model(&path.model, path.version.as_deref()).ok_or_else(|| {
        let what = match &path.version {
            Some(version) => format!("model `{}` version `{version}`", path.model),
            None => format!("model `{}`", path.model),
        };
        let error = ApiError::forbidden(format!("{what} is not granted to tenant `{}`", tenant.id));
        Refusal { tenant: tenant.id.clone(), error }
    })?;
    Ok((tenant, model))
}

async fn model_metadata(state: Shared, ApiPath(path): ApiPath<ModelPath>, headers: HeaderMap) -> Response {
    let (tenant, held) = match granted(&state, &headers, &path) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let shape = |dims: &[Dim]| -> Vec<i64> {
        dims.iter().map(|d| if let Dim::Fixed(n) = d { *n as i64 } else { -1 }).collect()
    };
    let model = &held.model;
    let inputs: Vec<Value> = model
        .inputs()
        .iter()
        .map(|i| json!({"name": i.name, "datatype": wire::datatype_name(i.element_type), "shape": shape(&i.shape)}))
        .collect();
    let outputs: Vec<Value> = model
        .outputs()
        .iter()
        .map(|o| {
            let datatype = o.element_type.map_or("UNSUPPORTED", wire::datatype_name);
            json!({"name": o.name, "datatype": datatype, "shape": shape(&o.shape)})
        })
        .collect();
    let versions = tenant.versions(&held.name);
    let metadata = json!({
        "name": held.name,
        "versions": versions,
        "platform": "onnx_tract",
        "inputs": inputs,
        "outputs": outputs,
    });
    charged(&tenant.id, &path.label(), Json(metadata))
}

async fn model_ready(state: Shared, ApiPath(path): ApiPath<ModelPath>, headers: HeaderMap) -> Response {
    match granted(&state, &headers, &path) {
        // Models are loaded before the node listens: a granted one is ready.
        Ok((tenant, _)) => charged(&tenant.id, &path.label(), StatusCode::OK),
        Err(refusal) => refusal.into_response(),
    }
}

async fn infer(
    state: Shared,
    Extension(id): Extension<RequestId>,
    ApiPath(path): ApiPath<ModelPath>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (tenant, held) = match granted(&state, &headers, &path) {
        Ok(found) => found,
        Err(Refusal { tenant, error }) => return Refusal { tenant, error: drained(body, error).await }.into_response(),
    };
    let outcome = async {
        if headers.get(header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes() != b"identity") {
            let refusal = ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "compressed requests are not supported: send them uncompressed",
            );
            return Err(drained(body, refusal).await);
        }
        let (_turn, body) = state.admit(&tenant, body, &headers, &id.0).await?;
        let header_length = headers.get(wire::HEADER_LENGTH).map(|v| v.to_str().unwrap_or("?"));
        let (request, inputs) = wire::parse_request(&body, header_length).map_err(ApiError::bad_request)?;
        let deadline = Duration::from_millis(tenant.limits.infer_deadline_ms);
        let started = Instant::now();
        let outputs = state.node.runtime.infer(&tenant.id, &held.model, inputs, deadline).await;
        state.metrics.inference(&tenant.id, &held.name, started.elapsed());
        let outputs = outputs.map_err(|e| match e {
            InferError::InvalidInput(message) => ApiError::bad_request(message),
            InferError::Deadline(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string()),
            InferError::Failed(message) => {
                tracing::error!(model = %held.name, error_id = %id.0, "inference failed: {}", mantle_types::untrusted::escaped(&message));
                ApiError::internal(&id.0, "the model failed")
            }
        })?;
        encode_response(&held, request, outputs, &id.0)
    };
    charged(&tenant.id, &path.label(), outcome.await.into_response())
}

/// The response for `outputs`, with the tensors the request asked for in
/// the form it asked for.
fn encode_response(
    held: &HeldModel,
    request: InferRequest,
    mut outputs: Vec<(String, HostTensor)>,
    request_id: &str,
) -> Result<Response, ApiError> {
    let binary_default = wire::flag(&request.parameters, "binary_data_output").unwrap_or(false);
    // Each output requested, with whether it goes as binary; all outputs
    // when none are named.
    let chosen: Vec<(String, bool)> = if request.outputs.is_empty() {
        outputs.iter().map(|(name, _)| (name.clone(), binary_default)).collect()
    } else {
        request
            .outputs
            .iter()
            .map(|o| (o.name.clone(), wire::flag(&o.parameters, "binary_data").unwrap_or(binary_default)))
            .collect()
    };
    let mut tensors = Vec::with_capacity(chosen.len());
    let mut binary = Vec::new();
    for (name, as_binary) in chosen {
        let position = outputs.iter().position(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<&str> = held.model.outputs().iter().map(|o| o.name.as_str()).collect();
            ApiError::bad_request(format!("model `{}` has no output `{name}`; its outputs are {names:?}", held.name))
        })?;
        let (name, tensor) = outputs.swap_remove(position);
        let mut output = OutputTensor {
            name,
            datatype: wire::datatype_name(tensor.element_type),
            shape: tensor.shape.clone(),
            parameters: Default::default(),
            data: None,
        };
        if as_binary {
            output.parameters.insert("binary_data_size".to_owned(), tensor.data.len().into());
            binary.extend_from_slice(&tensor.data);
        } else {
            output.data = Some(wire::decode_json(&tensor));
        }
        tensors.push(output);
    }
    let response = InferResponse {
        model_name: held.name.clone(),
        model_version: held.version.clone(),
        id: request.id,
        outputs: tensors,
    };
    // Nothing the client sent can make this fail: it is the node's fault.
    let mut body = serde_json::to_vec(&response).map_err(|e| {
        tracing::error!(model = %held.name, error_id = %request_id, "an output cannot be written as JSON: {e}");
        ApiError::internal(request_id, "the response cannot be written as JSON")
    })?;
    if binary.is_empty() {
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    }
    let header_length = HeaderValue::from(body.len());
    body.extend_from_slice(&binary);
    let mut answer = ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response();
    answer.headers_mut().insert(wire::HEADER_LENGTH, header_length);
    Ok(answer)
}

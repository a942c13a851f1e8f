//! axum's path, query and JSON extractors, refusing what they cannot read
//! with the node's JSON error instead of axum's plain-text one, so that
//! every refusal a client gets has the same shape.

use super::error::ApiError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// The parameters of a route's path, e.g. `{tenant}`.
pub struct ApiPath<T>(pub T);

/// The query string.
pub struct ApiQuery<T>(pub T);

/// A JSON body.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(path_refused(&rejection)),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_refused(&rejection)),
        }
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_refused(&rejection)),
        }
    }
}

fn path_refused(rejection: &PathRejection) -> ApiError {
    // A path the router matched but whose parameters cannot be read: most
    // often percent-encoding that does not decode to UTF-8.
    ApiError::new(rejection.status(), format!("the path cannot be read: {}", rejection.body_text()))
}

fn query_refused(rejection: &QueryRejection) -> ApiError {
    ApiError::new(rejection.status(), format!("the query string cannot be read: {}", rejection.body_text()))
}

fn json_refused(rejection: &JsonRejection) -> ApiError {
    ApiError::new(rejection.status(), format!("the body is not the JSON expected: {}", rejection.body_text()))
}

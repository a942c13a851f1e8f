//! The HTTP status each refusal and failure of the layers below answers
//! with. The domain errors say what went wrong; only the server knows it
//! speaks HTTP.

use axum::http::StatusCode;
use mantle_bundle::BundleError;
use mantle_node::deploy::DeployError;
use mantle_node::resolve::ResolveError;
use mantle_node::store::StoreError;
use mantle_oci::OciError;
use mantle_runtime::{GuestError, HandleError, SetupError};

/// The status of a refused deployment change.
pub fn of_deploy(error: &DeployError) -> StatusCode {
    match error {
        DeployError::UnknownTenant(_)
        | DeployError::Store(StoreError::UnknownDeployment { .. } | StoreError::UnknownVersion { .. }) => {
            StatusCode::NOT_FOUND
        }
        DeployError::Conflict { .. } | DeployError::Store(StoreError::VersionExists { .. }) => StatusCode::CONFLICT,
        DeployError::Bundle(BundleError::Unsigned | BundleError::UntrustedSigner(_)) => StatusCode::FORBIDDEN,
        DeployError::Module(ResolveError::Setup(SetupError::Busy { .. })) => StatusCode::SERVICE_UNAVAILABLE,
        DeployError::Bundle(_) | DeployError::Model { .. } | DeployError::Module(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DeployError::NoStore => StatusCode::NOT_IMPLEMENTED,
        DeployError::Store(StoreError::Full { .. }) => StatusCode::INSUFFICIENT_STORAGE,
        DeployError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        DeployError::Registry(OciError::Registry(_) | OciError::BlobMismatch { .. }) => StatusCode::BAD_GATEWAY,
        DeployError::Registry(_) => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// The status of a guest request that did not end in the guest's own
/// response.
pub fn of_guest(error: &HandleError) -> StatusCode {
    match error {
        HandleError::Guest(GuestError::InvalidInput(_)) => StatusCode::BAD_REQUEST,
        HandleError::Guest(GuestError::UnsupportedMediaType(_)) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        HandleError::Guest(GuestError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        HandleError::Guest(GuestError::Forbidden(_)) => StatusCode::FORBIDDEN,
        HandleError::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
        HandleError::MemoryLimit { .. }
        | HandleError::Trap(_)
        | HandleError::Start(_)
        | HandleError::ResponseTooLarge { .. }
        | HandleError::HeadersTooLarge { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        HandleError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

//! A guest compiled natively instead of to WebAssembly: its models come from
//! the program it is linked into, which installs a [`Backend`].
//!
//! This is how the same handler runs outside the sandbox, so that the
//! benchmark can measure what the sandbox costs (`mantle-bench sandbox`).
//! Nothing here is isolated: a native build is a measurement tool, never a
//! way to serve tenants.

use crate::nn::{ErrorCode, InferenceError, TensorType};
use std::sync::{Arc, OnceLock};

/// A tensor held in the guest's own memory, with the same constructor and
/// accessors as the `wasi:nn` resource it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dimensions: Vec<u32>,
    ty: TensorType,
    data: Vec<u8>,
}

impl Tensor {
    /// A tensor of shape `dimensions` and element type `ty` over
    /// little-endian `data`.
    pub fn new(dimensions: &[u32], ty: TensorType, data: &[u8]) -> Tensor {
        Tensor { dimensions: dimensions.to_vec(), ty, data: data.to_vec() }
    }

    pub fn dimensions(&self) -> Vec<u32> {
        self.dimensions.clone()
    }

    pub fn ty(&self) -> TensorType {
        self.ty
    }

    pub fn data(&self) -> Vec<u8> {
        self.data.clone()
    }

    /// A tensor taking ownership of `data`, without copying it.
    pub fn from_parts(dimensions: Vec<u32>, ty: TensorType, data: Vec<u8>) -> Tensor {
        Tensor { dimensions, ty, data }
    }

    /// Shape, type and data, without copying.
    pub fn into_parts(self) -> (Vec<u32>, TensorType, Vec<u8>) {
        (self.dimensions, self.ty, self.data)
    }
}

/// Where a native guest's models and configuration come from.
pub trait Backend: Send + Sync {
    /// The model `name` (or `name@version`), as `wasi:nn`'s `load-by-name`.
    fn load(&self, name: &str) -> Result<Arc<dyn Graph>, InferenceError>;

    /// A configuration value, as the operator would set for the module.
    fn config(&self, _key: &str) -> Option<String> {
        None
    }
}

/// A loaded model.
pub trait Graph: Send + Sync {
    /// Runs the model on named inputs and returns its named outputs.
    fn compute(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, InferenceError>;
}

static BACKEND: OnceLock<Arc<dyn Backend>> = OnceLock::new();

/// Installs the backend every native guest in this process uses. Returns
/// `false`, and changes nothing, if one is already installed.
pub fn install(backend: Arc<dyn Backend>) -> bool {
    BACKEND.set(backend).is_ok()
}

pub(crate) fn backend() -> Result<&'static Arc<dyn Backend>, InferenceError> {
    BACKEND.get().ok_or_else(|| InferenceError {
        code: ErrorCode::UnsupportedOperation,
        message: "this native build has no model backend: call mantle_guest::native::install first".to_owned(),
    })
}

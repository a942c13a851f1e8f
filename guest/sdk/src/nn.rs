//! Running models: load a granted model by name, build tensors from slices,
//! run, and read outputs back as typed vectors.

use crate::Error;
use std::fmt;

pub use crate::bindings::wasi::nn::errors::ErrorCode;
#[cfg(target_arch = "wasm32")]
pub use crate::bindings::wasi::nn::tensor::Tensor;
pub use crate::bindings::wasi::nn::tensor::TensorType;
#[cfg(not(target_arch = "wasm32"))]
pub use crate::native::Tensor;

/// A `wasi:nn` call failed. Converts into [`Error::Internal`] with `?`.
#[derive(Debug, Clone)]
pub struct InferenceError {
    /// The `wasi:nn` error code, e.g. `security` for an ungranted model.
    pub code: ErrorCode,
    /// What the host said about it.
    pub message: String,
}

impl InferenceError {
    fn local(message: String) -> Self {
        InferenceError { code: ErrorCode::InvalidArgument, message }
    }

    /// The error code as the WIT spells it (`invalid-argument`, `security`, ...).
    pub fn code_name(&self) -> &'static str {
        match self.code {
            ErrorCode::InvalidArgument => "invalid-argument",
            ErrorCode::InvalidEncoding => "invalid-encoding",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RuntimeError => "runtime-error",
            ErrorCode::UnsupportedOperation => "unsupported-operation",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Security => "security",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for InferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code_name())
    }
}

impl std::error::Error for InferenceError {}

/// A model the module may not load is the caller's to know about (403);
/// any other inference failure is the handler's (500).
impl From<InferenceError> for Error {
    fn from(error: InferenceError) -> Self {
        match error.code {
            ErrorCode::Security => Error::Forbidden(error.to_string()),
            _ => Error::Internal(error.to_string()),
        }
    }
}

/// A model this module was granted, loaded by name.
pub struct Model {
    name: String,
    graph: backend::Graph,
}

impl Model {
    /// Loads the granted model `name` (or `name@version`).
    pub fn load(name: &str) -> Result<Self, InferenceError> {
        let graph = backend::load(name).map_err(|e| e.context(&format!("loading model `{name}`")))?;
        Ok(Model { name: name.to_owned(), graph })
    }

    /// A session for a series of runs, e.g. frame by frame.
    pub fn session(&self) -> Result<Session, InferenceError> {
        let context =
            backend::session(&self.graph).map_err(|e| e.context(&format!("starting a session on `{}`", self.name)))?;
        Ok(Session { model: self.name.clone(), context })
    }

    /// Runs the model once on named inputs.
    pub fn run<N: Into<String>>(
        &self,
        inputs: impl IntoIterator<Item = (N, Tensor)>,
    ) -> Result<Outputs, InferenceError> {
        self.session()?.run(inputs)
    }
}

/// An execution context on one model.
pub struct Session {
    model: String,
    context: backend::Context,
}

impl Session {
    /// Runs the model on named inputs. Tensors are moved to the host, so an
    /// output of an earlier run can be fed back without copying it.
    pub fn run<N: Into<String>>(
        &self,
        inputs: impl IntoIterator<Item = (N, Tensor)>,
    ) -> Result<Outputs, InferenceError> {
        let inputs = inputs.into_iter().map(|(name, tensor)| (name.into(), tensor)).collect();
        let outputs =
            backend::compute(&self.context, inputs).map_err(|e| e.context(&format!("running `{}`", self.model)))?;
        Ok(Outputs { model: self.model.clone(), tensors: outputs })
    }
}

impl InferenceError {
    /// Puts what the guest was doing in front of the message.
    fn context(self, doing: &str) -> Self {
        InferenceError { code: self.code, message: format!("{doing}: {}", self.message) }
    }
}

/// `wasi:nn` as the node provides it.
#[cfg(target_arch = "wasm32")]
mod backend {
    use super::{InferenceError, Tensor};
    use crate::bindings::wasi::nn::errors;
    use crate::bindings::wasi::nn::graph;

    pub type Graph = graph::Graph;
    pub type Context = crate::bindings::wasi::nn::inference::GraphExecutionContext;

    fn from_host(error: errors::Error) -> InferenceError {
        InferenceError { code: error.code(), message: error.data() }
    }

    pub fn load(name: &str) -> Result<Graph, InferenceError> {
        graph::load_by_name(name).map_err(from_host)
    }

    pub fn session(graph: &Graph) -> Result<Context, InferenceError> {
        graph.init_execution_context().map_err(from_host)
    }

    pub fn compute(context: &Context, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, InferenceError> {
        context.compute(inputs).map_err(from_host)
    }
}

/// The models of the program the guest is compiled into (see [`crate::native`]).
#[cfg(not(target_arch = "wasm32"))]
mod backend {
    use super::{InferenceError, Tensor};
    use std::sync::Arc;

    pub type Graph = Arc<dyn crate::native::Graph>;
    pub type Context = Graph;

    pub fn load(name: &str) -> Result<Graph, InferenceError> {
        crate::native::backend()?.load(name)
    }

    pub fn session(graph: &Graph) -> Result<Context, InferenceError> {
        Ok(graph.clone())
    }

    pub fn compute(context: &Context, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>, InferenceError> {
        context.compute(inputs)
    }
}

/// The named outputs of one run.
pub struct Outputs {
    model: String,
    tensors: Vec<(String, Tensor)>,
}

impl Outputs {
    /// The output called `name`.
    pub fn get(&self, name: &str) -> Result<&Tensor, InferenceError> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| self.missing(name))
    }

    /// Takes the output called `name`, e.g. to feed it into the next run.
    pub fn take(&mut self, name: &str) -> Result<Tensor, InferenceError> {
        let index = self.tensors.iter().position(|(n, _)| n == name).ok_or_else(|| self.missing(name))?;
        Ok(self.tensors.remove(index).1)
    }

    /// The output names, in the model's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    fn missing(&self, name: &str) -> InferenceError {
        let names: Vec<&str> = self.names().collect();
        InferenceError::local(format!("model `{}` has no output `{name}` (it has {names:?})", self.model))
    }
}

/// A Rust type that is a `wasi:nn` tensor element.
pub trait Element: Copy + sealed::Sealed {
    /// The matching tensor type.
    const TYPE: TensorType;
    /// Bytes per element.
    const SIZE: usize;
    /// Writes the little-endian bytes of `self` into exactly
    /// [`Self::SIZE`] bytes.
    fn write(self, out: &mut [u8]);
    /// Reads one element from exactly [`Self::SIZE`] little-endian bytes.
    fn get(bytes: &[u8]) -> Self;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($ty:ty, $tensor_type:ident) => {
        impl sealed::Sealed for $ty {}
        impl Element for $ty {
            const TYPE: TensorType = TensorType::$tensor_type;
            const SIZE: usize = std::mem::size_of::<$ty>();
            #[inline]
            fn write(self, out: &mut [u8]) {
                out.copy_from_slice(&self.to_le_bytes());
            }
            #[inline]
            fn get(bytes: &[u8]) -> Self {
                let mut raw = [0u8; std::mem::size_of::<$ty>()];
                raw.copy_from_slice(bytes);
                <$ty>::from_le_bytes(raw)
            }
        }
    };
}

element!(f32, Fp32);
element!(f64, Fp64);
element!(u8, U8);
element!(i32, I32);
element!(i64, I64);

impl Tensor {
    /// A tensor of shape `dimensions` holding `data` in row-major order.
    pub fn from_slice<T: Element>(dimensions: &[u32], data: &[T]) -> Tensor {
        // Fixed-size chunks of a buffer sized once compile to a plain copy
        // loop; pushing element by element showed in `perf` on image-classify.
        let mut bytes = vec![0u8; data.len() * T::SIZE];
        for (out, &value) in bytes.chunks_exact_mut(T::SIZE).zip(data) {
            value.write(out);
        }
        Tensor::new(dimensions, T::TYPE, &bytes)
    }

    /// The elements, if the tensor holds `T`.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, InferenceError> {
        let ty = self.ty();
        if ty != T::TYPE {
            return Err(InferenceError::local(format!("the tensor holds {ty:?}, not {:?}", T::TYPE)));
        }
        Ok(self.data().chunks_exact(T::SIZE).map(T::get).collect())
    }
}

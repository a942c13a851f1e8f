//! The host side of `wasi:nn`: tensors, graphs and execution contexts as
//! resources in the request's table, grant checks on `load-by-name`, and
//! computation handed to the inference pool (or, for a model whose
//! inferences take well under a millisecond, run in place).
//!
//! A guest never names a file and never reaches a model it was not granted.

use crate::GuestLimiter;
use crate::bindings::wasi::nn::errors::{self, ErrorCode};
use crate::bindings::wasi::nn::graph::{self, ExecutionTarget, GraphEncoding};
use crate::bindings::wasi::nn::inference::{self, NamedTensor};
use crate::bindings::wasi::nn::tensor::{self, TensorType};
use mantle_models::{ElementType, HostTensor, InferencePool, Model, PoolError, RunError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// Longest model name a guest may ask for.
const MAX_NAME_LEN: usize = 256;

/// The models a module may load, by the name the guest uses, each with
/// the name its messages and metrics say (the name without `@version`),
/// made once here rather than on every load.
#[derive(Debug, Default)]
pub struct Grants {
    models: BTreeMap<String, (Arc<Model>, Arc<str>)>,
}

impl Grants {
    pub fn new(models: BTreeMap<String, Arc<Model>>) -> Self {
        let models = models
            .into_iter()
            .map(|(name, model)| {
                let shown: Arc<str> = Arc::from(name.split_once('@').map_or(name.as_str(), |(model, _)| model));
                (name, (model, shown))
            })
            .collect();
        Grants { models }
    }

    fn get(&self, name: &str) -> Option<&(Arc<Model>, Arc<str>)> {
        self.models.get(name)
    }

    /// The names a guest may load, `name` or `name@version`, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }
}

/// A tensor resource, as the guest built it or a model returned it.
pub struct NnTensor {
    dimensions: Vec<u32>,
    ty: TensorType,
    data: Vec<u8>,
}

/// A graph resource: a granted model.
pub struct NnGraph {
    model: Arc<Model>,
    /// The name the guest loaded it by, without the version: what every
    /// message and metric about it says. A model held once for several
    /// tenants has one name of its own, which only the first knew.
    name: Arc<str>,
}

/// An execution-context resource on a granted model.
pub struct NnSession {
    model: Arc<Model>,
    name: Arc<str>,
}

/// An error resource: a `wasi:nn` code and a message for the guest.
#[derive(Debug)]
pub struct NnError {
    code: ErrorCode,
    message: String,
}

/// Per-request `wasi:nn` state.
pub(crate) struct NnCtx {
    grants: Arc<Grants>,
    pool: Arc<InferencePool>,
    /// Whom the request's inferences are queued for in the pool.
    tenant: Arc<str>,
    /// When the request ends: inferences still queued then are dropped.
    deadline: Instant,
    /// Each model computation of this request: the model and its time.
    pub(crate) inferences: Vec<(Arc<str>, Duration)>,
    /// Refused calls logged so far: a guest can make them in a loop.
    refusals_logged: usize,
}

/// Refused `wasi:nn` calls logged per request, at debug level.
const MAX_REFUSALS_LOGGED: usize = 16;

impl NnCtx {
    pub(crate) fn new(grants: Arc<Grants>, pool: Arc<InferencePool>, tenant: Arc<str>, deadline: Instant) -> Self {
        NnCtx { grants, pool, tenant, deadline, inferences: Vec::new(), refusals_logged: 0 }
    }
}

/// The borrow of the store that the `wasi:nn` host functions work on.
pub(crate) struct NnView<'a> {
    ctx: &'a mut NnCtx,
    table: &'a mut ResourceTable,
    /// The request's memory account: tensor data lives in host memory, and
    /// is charged to it like the guest's own memory.
    memory: &'a mut GuestLimiter,
}

impl<'a> NnView<'a> {
    pub(crate) fn new(ctx: &'a mut NnCtx, table: &'a mut ResourceTable, memory: &'a mut GuestLimiter) -> Self {
        NnView { ctx, table, memory }
    }

    /// Puts a tensor in the table, charging its data to the request's
    /// memory account. Past the limit the guest is stopped: the
    /// constructor of a `wasi:nn` tensor has no way to return an error.
    fn push_tensor(&mut self, tensor: NnTensor) -> wasmtime::Result<Resource<NnTensor>> {
        let bytes = tensor.data.len();
        if !self.memory.charge(bytes) {
            wasmtime::bail!(
                "a wasi:nn tensor of {bytes} bytes does not fit in the guest's memory limit of {} bytes",
                self.memory.limit()
            );
        }
        match self.table.push(tensor) {
            Ok(resource) => Ok(resource),
            Err(full) => {
                self.memory.release(bytes);
                Err(full.into())
            }
        }
    }

    /// Takes a tensor out of the table, returning its data to the account.
    fn take_tensor(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<NnTensor> {
        let tensor = self.table.delete(tensor)?;
        self.memory.release(tensor.data.len());
        Ok(tensor)
    }

    /// Puts `error` in the table for the guest to inspect.
    fn fail<T>(&mut self, code: ErrorCode, message: String) -> wasmtime::Result<Result<T, Resource<NnError>>> {
        if self.ctx.refusals_logged < MAX_REFUSALS_LOGGED {
            self.ctx.refusals_logged += 1;
            // The message quotes names the guest chose.
            tracing::debug!(?code, message = %mantle_types::untrusted::escaped(&message), "wasi:nn call refused");
        }
        Ok(Err(self.table.push(NnError { code, message })?))
    }
}

struct HasNn;

impl HasData for HasNn {
    type Data<'a> = NnView<'a>;
}

pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    tensor::add_to_linker::<_, HasNn>(linker, view)?;
    graph::add_to_linker::<_, HasNn>(linker, view)?;
    inference::add_to_linker::<_, HasNn>(linker, view)?;
    errors::add_to_linker::<_, HasNn>(linker, view)?;
    Ok(())
}

impl graph::Host for NnView<'_> {
    fn load(
        &mut self,
        _builder: Vec<Vec<u8>>,
        _encoding: GraphEncoding,
        _target: ExecutionTarget,
    ) -> wasmtime::Result<Result<Resource<NnGraph>, Resource<NnError>>> {
        self.fail(
            ErrorCode::Security,
            "loading a model from bytes is not allowed: use load-by-name with a granted model".to_owned(),
        )
    }

    fn load_by_name(&mut self, name: String) -> wasmtime::Result<Result<Resource<NnGraph>, Resource<NnError>>> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            let shown: String = name.chars().take(64).collect();
            return self.fail(
                ErrorCode::InvalidArgument,
                format!("`{shown}` is not a model name (1 to {MAX_NAME_LEN} printable characters)"),
            );
        }
        match self.ctx.grants.get(&name) {
            Some((model, shown)) => {
                let graph = NnGraph { model: Arc::clone(model), name: Arc::clone(shown) };
                Ok(Ok(self.table.push(graph)?))
            }
            // The same answer whether or not the model exists elsewhere on
            // the node: a guest learns nothing about other tenants' models.
            None => self.fail(ErrorCode::Security, format!("model `{name}` is not granted to this module")),
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(
        &mut self,
        graph: Resource<NnGraph>,
    ) -> wasmtime::Result<Result<Resource<NnSession>, Resource<NnError>>> {
        let graph = self.table.get(&graph)?;
        let (model, name) = (Arc::clone(&graph.model), Arc::clone(&graph.name));
        Ok(Ok(self.table.push(NnSession { model, name })?))
    }

    fn drop(&mut self, graph: Resource<NnGraph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        session: Resource<NnSession>,
        inputs: Vec<NamedTensor>,
    ) -> wasmtime::Result<Result<Vec<NamedTensor>, Resource<NnError>>> {
        let session = self.table.get(&session)?;
        let (model, model_name) = (Arc::clone(&session.model), Arc::clone(&session.name));
        let mut host_inputs = Vec::with_capacity(inputs.len());
        for (name, tensor) in inputs {
            let tensor = self.take_tensor(tensor)?;
            match to_host(tensor) {
                Ok(tensor) => host_inputs.push((name, tensor)),
                Err((code, message)) => return self.fail(code, format!("input `{name}`: {message}")),
            }
        }
        // Model::run checks names, types and shapes before computing.
        let started = Instant::now();
        let (tenant, deadline) = (Arc::clone(&self.ctx.tenant), self.ctx.deadline);
        let outcome = mantle_models::infer(&self.ctx.pool, tenant, deadline, &model, host_inputs).await;
        self.ctx.inferences.push((Arc::clone(&model_name), started.elapsed()));
        let outputs = match outcome {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(RunError::InvalidInput(message))) => return self.fail(ErrorCode::InvalidArgument, message),
            Ok(Err(RunError::Failed { message, .. })) => {
                return self.fail(ErrorCode::RuntimeError, format!("model `{model_name}` failed: {message}"));
            }
            Err(PoolError::Expired) => {
                return self.fail(ErrorCode::Timeout, format!("model `{model_name}`: the request's deadline passed"));
            }
            Err(pool_error) => {
                let message = pool_error.to_string();
                tracing::error!(
                    model = %model_name,
                    "inference failed: {}",
                    mantle_types::untrusted::escaped(&message)
                );
                return self.fail(ErrorCode::RuntimeError, format!("model `{model_name}` failed"));
            }
        };
        let mut named = Vec::with_capacity(outputs.len());
        for (name, tensor) in outputs {
            let tensor = match from_host(tensor) {
                Ok(tensor) => tensor,
                Err(message) => {
                    return self.fail(ErrorCode::UnsupportedOperation, format!("output `{name}`: {message}"));
                }
            };
            named.push((name, self.push_tensor(tensor)?));
        }
        Ok(Ok(named))
    }

    fn drop(&mut self, session: Resource<NnSession>) -> wasmtime::Result<()> {
        self.table.delete(session)?;
        Ok(())
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    fn new(&mut self, dimensions: Vec<u32>, ty: TensorType, data: Vec<u8>) -> wasmtime::Result<Resource<NnTensor>> {
        // The data is already a copy in host memory, bounded by the guest's
        // own memory. Shape and length are checked when the tensor is used,
        // where an error can be returned.
        self.push_tensor(NnTensor { dimensions, ty, data })
    }

    fn dimensions(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&tensor)?.dimensions.clone())
    }

    fn ty(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<TensorType> {
        Ok(self.table.get(&tensor)?.ty)
    }

    fn data(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&tensor)?.data.clone())
    }

    fn drop(&mut self, tensor: Resource<NnTensor>) -> wasmtime::Result<()> {
        self.take_tensor(tensor)?;
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    fn code(&mut self, error: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    fn data(&mut self, error: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.message.clone())
    }

    fn drop(&mut self, error: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}

fn element_type(ty: TensorType) -> Result<ElementType, (ErrorCode, String)> {
    Ok(match ty {
        TensorType::Fp16 => ElementType::F16,
        TensorType::Fp32 => ElementType::F32,
        TensorType::Fp64 => ElementType::F64,
        TensorType::U8 => ElementType::U8,
        TensorType::I32 => ElementType::I32,
        TensorType::I64 => ElementType::I64,
        TensorType::Bf16 => {
            return Err((ErrorCode::UnsupportedOperation, "BF16 tensors are not supported".to_owned()));
        }
    })
}

fn tensor_type(element_type: ElementType) -> TensorType {
    match element_type {
        ElementType::F16 => TensorType::Fp16,
        ElementType::F32 => TensorType::Fp32,
        ElementType::F64 => TensorType::Fp64,
        ElementType::U8 => TensorType::U8,
        ElementType::I32 => TensorType::I32,
        ElementType::I64 => TensorType::I64,
    }
}

fn to_host(tensor: NnTensor) -> Result<HostTensor, (ErrorCode, String)> {
    let element_type = element_type(tensor.ty)?;
    let shape: Vec<usize> = tensor.dimensions.iter().map(|&d| d as usize).collect();
    Ok(HostTensor { element_type, shape, data: tensor.data })
}

fn from_host(tensor: HostTensor) -> Result<NnTensor, String> {
    let dimensions = tensor
        .shape
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| format!("dimension {d} does not fit wasi:nn's u32")))
        .collect::<Result<_, _>>()?;
    Ok(NnTensor { dimensions, ty: tensor_type(tensor.element_type), data: tensor.data })
}

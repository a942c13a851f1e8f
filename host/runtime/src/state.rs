//! What one request's store holds: WASI and `wasi:http`, the resource
//! table, the `wasi:nn` context, the limiter, the guest's output, and who
//! the request is for; and the host side of the `mantle:edge/context`
//! interface.

use super::bindings::mantle::edge::context::{self, LogLevel};
use super::guest_output::{GuestOutput, Level, LogTags};
use super::limits::GuestLimiter;
use crate::nn::NnCtx;
use crate::proxy::OutgoingDenied;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::WasiHttpCtx;

pub(crate) struct GuestState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    /// Where the guest's outgoing HTTP requests go: nowhere.
    pub(crate) outgoing: OutgoingDenied,
    pub(crate) table: ResourceTable,
    pub(crate) nn: NnCtx,
    pub(crate) limiter: GuestLimiter,
    pub(crate) output: GuestOutput,
    pub(crate) tags: LogTags,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    /// The instance runs its initializer, whose snapshot every module made
    /// from the component shares: it is told of no tenant, module or
    /// request.
    pub(crate) initializing: bool,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl context::Host for GuestState {
    fn tenant_id(&mut self) -> wasmtime::Result<String> {
        Ok(if self.initializing { String::new() } else { self.tags.tenant.to_string() })
    }

    fn module_id(&mut self) -> wasmtime::Result<String> {
        Ok(if self.initializing { String::new() } else { self.tags.module.to_string() })
    }

    fn request_id(&mut self) -> wasmtime::Result<String> {
        Ok(if self.initializing { String::new() } else { self.tags.request_id.to_string() })
    }

    fn config_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }

    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            LogLevel::Trace => Level::Trace,
            LogLevel::Debug => Level::Debug,
            LogLevel::Info => Level::Info,
            LogLevel::Warn => Level::Warn,
            LogLevel::Error => Level::Error,
        };
        self.output.log(level, &message);
        Ok(())
    }
}

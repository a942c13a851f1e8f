//! What one request's store holds: WASI, the resource table, the `wasi:nn`
//! context, the limiter, and who the request is for; and the host side of
//! the `mantle:edge/context` interface.

use super::bindings::mantle::edge::context::{self, LogLevel};
use super::guest_log::{LogTags, printable};
use super::limits::GuestLimiter;
use crate::nn::NnCtx;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub(crate) struct GuestState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) nn: NnCtx,
    pub(crate) limiter: GuestLimiter,
    pub(crate) tags: LogTags,
    pub(crate) config: Arc<BTreeMap<String, String>>,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl context::Host for GuestState {
    fn tenant_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.tags.tenant.to_string())
    }

    fn module_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.tags.module.to_string())
    }

    fn request_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.tags.request_id.to_string())
    }

    fn config_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }

    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        const MAX_MESSAGE: usize = 4 << 10;
        let message = printable(match message.char_indices().nth(MAX_MESSAGE) {
            Some((cut, _)) => &message[..cut],
            None => &message,
        });
        let LogTags { tenant, module, request_id } = &self.tags;
        macro_rules! emit {
            ($level:ident) => {
                tracing::$level!(target: "mantle::guest", %tenant, %module, %request_id, "{message}")
            };
        }
        match level {
            LogLevel::Trace => emit!(trace),
            LogLevel::Debug => emit!(debug),
            LogLevel::Info => emit!(info),
            LogLevel::Warn => emit!(warn),
            LogLevel::Error => emit!(error),
        }
        Ok(())
    }
}

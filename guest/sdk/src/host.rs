//! What the host tells the guest about the current request, and the node log.

pub use crate::bindings::mantle::edge::context::LogLevel;

/// The tenant this request is charged to.
pub fn tenant_id() -> String {
    imp::tenant_id()
}

/// The module being run, as the operator named it.
pub fn module_id() -> String {
    imp::module_id()
}

/// The unique id of this request, as it appears in the node's log.
pub fn request_id() -> String {
    imp::request_id()
}

/// A configuration value the operator set for this module.
pub fn config(key: &str) -> Option<String> {
    imp::config(key)
}

/// Writes one line to the node's log, tagged with tenant and module.
pub fn log(level: LogLevel, message: &str) {
    imp::log(level, message)
}

/// [`log`] at `info` level.
pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

/// [`log`] at `warn` level.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    pub use crate::bindings::mantle::edge::context::{config_get as config, log, module_id, request_id, tenant_id};
}

/// A native build (see [`crate::native`]) has no node: it is one process
/// running one guest, and its log is stderr.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::LogLevel;

    pub fn tenant_id() -> String {
        "native".to_owned()
    }

    pub fn module_id() -> String {
        "native".to_owned()
    }

    pub fn request_id() -> String {
        "native".to_owned()
    }

    pub fn config(key: &str) -> Option<String> {
        crate::native::backend().ok()?.config(key)
    }

    pub fn log(level: LogLevel, message: &str) {
        eprintln!("{level:?}: {message}");
    }
}

//! What the host tells the guest about the current request, and the node log.

use crate::bindings::mantle::edge::context;

pub use context::LogLevel;

/// The tenant this request is charged to.
pub fn tenant_id() -> String {
    context::tenant_id()
}

/// The module being run, as the operator named it.
pub fn module_id() -> String {
    context::module_id()
}

/// The unique id of this request, as it appears in the node's log.
pub fn request_id() -> String {
    context::request_id()
}

/// A configuration value the operator set for this module.
pub fn config(key: &str) -> Option<String> {
    context::config_get(key)
}

/// Writes one line to the node's log, tagged with tenant and module.
pub fn log(level: LogLevel, message: &str) {
    context::log(level, message)
}

/// [`log`] at `info` level.
pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

/// [`log`] at `warn` level.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}

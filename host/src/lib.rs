//! mantle: a WebAssembly edge inference runtime.
//!
//! Tenants ship their pre- and post-processing as WebAssembly components
//! (guests); the node runs ONNX models natively with tract. A request goes
//! through [`runtime::Runtime::handle`]: a fresh, limited guest instance
//! decodes it, calls granted models through `wasi:nn` ([`nn`]), which run on
//! the inference pool ([`models`]), and answers.

pub mod bundle;
pub mod deploy;
pub mod examples;
pub mod models;
pub mod nn;
pub mod node;
pub mod runtime;
pub mod server;
pub mod store;
pub mod untrusted;

pub use mantle_manifest as manifest;
pub use mantle_types as types;

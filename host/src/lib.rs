//! mantle: a WebAssembly edge inference runtime.
//!
//! Tenants ship their pre- and post-processing as WebAssembly components
//! (guests); the node runs ONNX models natively with tract. This crate is
//! the `mantle` program and its embedded examples; each layer below it is
//! a crate of its own, re-exported here under its name:
//!
//! - [`types`]: identifiers, names, grants, digests, limits;
//! - [`manifest`]: `node.toml` and `mantle.toml`, parsed and checked;
//! - [`bundle`]: pack, sign and open bundles;
//! - [`oci`]: a bundle as an OCI artifact;
//! - [`models`]: tract, the project's kernels, the inference pool;
//! - [`runtime`]: the wasmtime engine, stores, limits and the `wasi:nn` host;
//! - [`node`]: tenants, deployments ([`deploy`]) and the [`store`];
//! - [`server`]: the HTTP edge, the one layer that speaks HTTP.
//!
//! A request goes through [`runtime::Runtime::handle`]: a fresh, limited
//! guest instance decodes it, calls granted models through `wasi:nn`
//! ([`runtime::nn`]), which run on the inference pool, and answers.

pub mod examples;

pub use mantle_bundle as bundle;
pub use mantle_manifest as manifest;
pub use mantle_models as models;
pub use mantle_node as node;
pub use mantle_node::{deploy, store};
pub use mantle_oci as oci;
pub use mantle_runtime as runtime;
pub use mantle_server as server;
pub use mantle_types as types;
pub use mantle_types::untrusted;

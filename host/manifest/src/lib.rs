//! What operators and tenants declare, read into checked types: the node's
//! configuration (`node.toml`, [`node`]) and a bundle's manifest
//! (`mantle.toml`, [`bundle`]), and the guest modules both declare
//! ([`module`]). Parsing and checking only: nothing here
//! loads a model or compiles a guest, so this crate builds, and is fuzzed,
//! without the runtime.

pub mod bundle;
pub mod module;
pub mod node;
pub mod signer;

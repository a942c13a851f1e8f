//! A guest module as it is declared, wherever it is declared: by the
//! operator in `node.toml`, by a tenant in a bundle's `mantle.toml`, by the
//! examples built into mantle, or on `mantle run`'s command line. Every one
//! of them is read into the same [`ModuleDeclaration`], which the node
//! resolves in one place.

use crate::bundle::BundlePath;
use crate::node::TenantLimits;
use mantle_types::{Grant, Id, ModuleLimits};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A guest module: its component, the models it may load, its limits and
/// the values it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleDeclaration {
    /// The module's name, unique within its tenant; its route is
    /// `/t/{tenant}/{id}`.
    pub id: Id,
    /// Where the component comes from.
    pub source: ModuleSource,
    /// Models the guest may load, by `name` (every version) or
    /// `name@version`, among those its declarer may grant.
    pub models: Vec<Grant>,
    pub limits: ModuleLimitsConfig,
    /// Values the guest reads through `context.config-get`.
    pub config: BTreeMap<String, String>,
}

/// Where a module's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleSource {
    /// A file on the machine's disk: `path` in `node.toml`, or the module
    /// `mantle run` is given.
    File(PathBuf),
    /// One of the guests built into mantle, by name: `example` in
    /// `node.toml`.
    Builtin(String),
    /// A file of the bundle that declares the module.
    Bundled(BundlePath),
}

/// Per-request limits of a module; what is left out takes the default.
/// Checked as it is read: a value no guest could run within is reported
/// at its table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawModuleLimits")]
pub struct ModuleLimitsConfig {
    /// Memory of one instance (linear memories, tables and `wasi:nn`
    /// tensors together), in MiB.
    memory_mib: Option<usize>,
    /// Wall-clock time for one request, in milliseconds.
    deadline_ms: Option<u64>,
}

/// `limits` of a module as written, before it is checked.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawModuleLimits {
    memory_mib: Option<usize>,
    deadline_ms: Option<u64>,
}

impl TryFrom<RawModuleLimits> for ModuleLimitsConfig {
    type Error = String;

    fn try_from(raw: RawModuleLimits) -> Result<Self, String> {
        ModuleLimitsConfig::new(raw.memory_mib, raw.deadline_ms)
    }
}

impl ModuleLimitsConfig {
    /// Limits asking for `memory_mib` and `deadline_ms`, the defaults where
    /// `None`; refused if no guest could run within them.
    pub fn new(memory_mib: Option<usize>, deadline_ms: Option<u64>) -> Result<Self, String> {
        let config = ModuleLimitsConfig { memory_mib, deadline_ms };
        config.limits().validate()?;
        Ok(config)
    }

    pub fn memory_mib(&self) -> Option<usize> {
        self.memory_mib
    }

    pub fn deadline_ms(&self) -> Option<u64> {
        self.deadline_ms
    }

    /// The limits as the runtime applies them, with the defaults for what
    /// is left out.
    pub fn limits(&self) -> ModuleLimits {
        let default = ModuleLimits::default();
        ModuleLimits {
            memory_bytes: self.memory_mib.map_or(default.memory_bytes, |mib| mib.saturating_mul(1 << 20)),
            deadline: self.deadline_ms.map_or(default.deadline, std::time::Duration::from_millis),
        }
    }

    /// The limits of a module a tenant ships, held to the tenant's
    /// ceilings: what is left out is the default or the ceiling, whichever
    /// is lower; asking for more than the ceiling is refused.
    pub fn limits_within(&self, ceiling: &TenantLimits) -> Result<ModuleLimits, String> {
        if let Some(mib) = self.memory_mib.filter(|&mib| mib > ceiling.max_memory_mib) {
            return Err(format!(
                "it asks for memory_mib = {mib}, over the tenant's max_memory_mib of {}",
                ceiling.max_memory_mib
            ));
        }
        if let Some(ms) = self.deadline_ms.filter(|&ms| ms > ceiling.max_deadline_ms) {
            return Err(format!(
                "it asks for deadline_ms = {ms}, over the tenant's max_deadline_ms of {}",
                ceiling.max_deadline_ms
            ));
        }
        let limits = self.limits();
        Ok(ModuleLimits {
            memory_bytes: limits.memory_bytes.min(ceiling.max_memory_mib.saturating_mul(1 << 20)),
            deadline: limits.deadline.min(std::time::Duration::from_millis(ceiling.max_deadline_ms)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_ceilings_bound_what_its_bundles_ask_for() {
        let ceiling = TenantLimits { max_memory_mib: 128, max_deadline_ms: 2_000, ..TenantLimits::default() };
        let asked = |memory_mib, deadline_ms| ModuleLimitsConfig { memory_mib, deadline_ms }.limits_within(&ceiling);
        let within = asked(Some(64), Some(1_000)).expect("within the ceilings");
        assert_eq!((within.memory_bytes, within.deadline.as_millis()), (64 << 20, 1_000));
        // Left out: the default, lowered to the ceiling.
        let defaults = asked(None, None).expect("the defaults, lowered");
        assert_eq!((defaults.memory_bytes, defaults.deadline.as_millis()), (128 << 20, 2_000));
        let memory = asked(Some(4096), None).expect_err("too much memory");
        assert!(memory.contains("memory_mib = 4096") && memory.contains("max_memory_mib of 128"), "{memory}");
        let day = asked(None, Some(86_400_000)).expect_err("a day");
        assert!(day.contains("deadline_ms = 86400000") && day.contains("max_deadline_ms of 2000"), "{day}");
    }
}

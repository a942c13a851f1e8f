//! The node configuration file: the models a node holds, its tenants, their
//! keys, grants and limits, and the guest modules they run, as the operator
//! writes them in TOML. Parsing and checking only; nothing is loaded here.
//!
//! Every table refuses unknown fields, and identifiers are checked while
//! parsing, so that a mistake is reported at its line and column.

use crate::signer::PublicKey;
use mantle_types::{Grant, Id, ModuleLimits, Name, Sha256};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration {}:\n{message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    #[serde(default)]
    pub node: NodeSettings,
    /// `[[model]]` tables.
    #[serde(default, rename = "model")]
    pub models: Vec<ModelConfig>,
    /// `[[tenant]]` tables.
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
}

/// Settings of the node as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// How long in-flight requests may take to finish after SIGTERM or
    /// SIGINT before the node exits anyway.
    pub shutdown_grace_ms: u64,
    /// Guest instances live at once across all tenants.
    pub max_instances: u32,
    /// Threads that run models; 0 means one per core.
    pub inference_threads: usize,
    /// SHA-256 of the operator token that the admin API (`/admin/v1/...`)
    /// requires; without one the admin API is off.
    pub admin_token_sha256: Option<Sha256>,
    /// Public keys (hex, from `mantle keygen`) whose signatures the node
    /// accepts on bundles; when there are any, unsigned bundles are refused.
    pub trusted_signers: Vec<PublicKey>,
    /// Largest bundle the admin API accepts, in bytes.
    pub max_bundle_bytes: usize,
    /// How long a client may take to send a request's line and headers
    /// before the node closes the connection.
    pub header_read_timeout_ms: u64,
    /// `[node.tls]`: serve HTTPS instead of plain HTTP.
    pub tls: Option<TlsSettings>,
    /// Address space the child process that compiles a guest may map, in
    /// MiB. A guest that needs more to compile is refused.
    pub compile_memory_mib: u64,
    /// How long compiling one guest may take, in milliseconds. A guest
    /// that takes longer is refused.
    pub compile_timeout_ms: u64,
}

/// The certificate and key the node serves HTTPS with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, the node's own certificate first; relative
    /// to the configuration file.
    pub cert_path: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1);
    /// relative to the configuration file.
    pub key_path: PathBuf,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            shutdown_grace_ms: 10_000,
            max_instances: 256,
            inference_threads: 0,
            admin_token_sha256: None,
            trusted_signers: Vec::new(),
            max_bundle_bytes: 1 << 30,
            header_read_timeout_ms: 10_000,
            tls: None,
            compile_memory_mib: 2048,
            compile_timeout_ms: 120_000,
        }
    }
}

/// An ONNX model the node holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: Name,
    #[serde(default = "Name::first_version")]
    pub version: Name,
    /// The `.onnx` file, relative to the configuration file.
    pub path: PathBuf,
    /// Named input dimensions fixed before optimizing, e.g. `{ N = 1 }`.
    #[serde(default)]
    pub pin: BTreeMap<String, usize>,
}

/// A tenant: who may call, what it may reach, and how much it may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: Id,
    /// SHA-256 of each API key the tenant may present, in hex. Only hashes
    /// are stored; `mantle key` makes a key and its hash.
    pub key_sha256: Vec<Sha256>,
    /// Models the tenant may use, by `name` (every version) or
    /// `name@version`.
    #[serde(default)]
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub limits: TenantLimits,
    /// `[[tenant.module]]` tables.
    #[serde(default, rename = "module")]
    pub modules: Vec<ModuleConfig>,
}

/// What one tenant may use at once, and the most any of its deployed
/// modules may ask for. Checked as it is read, so that a mistake is
/// reported at its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(try_from = "RawTenantLimits")]
pub struct TenantLimits {
    /// Requests of the tenant that run at the same time.
    pub max_concurrent: usize,
    /// Requests that may wait for a turn; past that, 429.
    pub max_queued: usize,
    /// How long a queued request waits for a turn before it gets 503.
    pub queue_timeout_ms: u64,
    /// Largest request body, in bytes; past that, 413.
    pub max_body_bytes: usize,
    /// Deadline of a KServe inference request, in milliseconds.
    pub infer_deadline_ms: u64,
    /// The most memory a module of a deployed bundle may ask for, in MiB.
    /// A bundle may ask for less; one that asks for more is refused.
    pub max_memory_mib: usize,
    /// The longest deadline a module of a deployed bundle may ask for, in
    /// milliseconds; as `max_memory_mib`.
    pub max_deadline_ms: u64,
}

impl Default for TenantLimits {
    fn default() -> Self {
        let module = ModuleLimits::default();
        TenantLimits {
            max_concurrent: 8,
            max_queued: 32,
            queue_timeout_ms: 5_000,
            max_body_bytes: 16 << 20,
            infer_deadline_ms: 10_000,
            max_memory_mib: module.memory_bytes >> 20,
            max_deadline_ms: module.deadline.as_millis() as u64,
        }
    }
}

/// `limits` of a tenant as written, before it is checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTenantLimits {
    max_concurrent: usize,
    max_queued: usize,
    queue_timeout_ms: u64,
    max_body_bytes: usize,
    infer_deadline_ms: u64,
    max_memory_mib: usize,
    max_deadline_ms: u64,
}

impl Default for RawTenantLimits {
    fn default() -> Self {
        let limits = TenantLimits::default();
        RawTenantLimits {
            max_concurrent: limits.max_concurrent,
            max_queued: limits.max_queued,
            queue_timeout_ms: limits.queue_timeout_ms,
            max_body_bytes: limits.max_body_bytes,
            infer_deadline_ms: limits.infer_deadline_ms,
            max_memory_mib: limits.max_memory_mib,
            max_deadline_ms: limits.max_deadline_ms,
        }
    }
}

impl TryFrom<RawTenantLimits> for TenantLimits {
    type Error = String;

    fn try_from(raw: RawTenantLimits) -> Result<Self, String> {
        if raw.max_concurrent == 0 {
            return Err("max_concurrent is 0, so no request could run".to_owned());
        }
        if raw.max_body_bytes == 0 {
            return Err("max_body_bytes is 0".to_owned());
        }
        if raw.infer_deadline_ms == 0 {
            return Err("infer_deadline_ms is 0".to_owned());
        }
        let ceiling = ModuleLimits {
            memory_bytes: raw.max_memory_mib.saturating_mul(1 << 20),
            deadline: std::time::Duration::from_millis(raw.max_deadline_ms),
        };
        ceiling.validate().map_err(|m| format!("max_memory_mib and max_deadline_ms: {m}"))?;
        Ok(TenantLimits {
            max_concurrent: raw.max_concurrent,
            max_queued: raw.max_queued,
            queue_timeout_ms: raw.queue_timeout_ms,
            max_body_bytes: raw.max_body_bytes,
            infer_deadline_ms: raw.infer_deadline_ms,
            max_memory_mib: raw.max_memory_mib,
            max_deadline_ms: raw.max_deadline_ms,
        })
    }
}

/// A guest module of a tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    pub id: Id,
    /// The component, relative to the configuration file. Either this or
    /// `example`.
    pub path: Option<PathBuf>,
    /// One of the example guests built into mantle, by name.
    pub example: Option<String>,
    /// Models the guest may load, among the tenant's grants.
    #[serde(default)]
    pub models: Vec<Grant>,
    #[serde(default)]
    pub limits: ModuleLimitsConfig,
    /// Values the guest reads through `context.config-get`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
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

impl NodeConfig {
    /// Reads and checks the configuration at `path`. Relative paths in it
    /// are made relative to the file's directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })
    }

    /// Parses and checks configuration text, resolving relative paths
    /// against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<NodeConfig, String> {
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        if let Some(tls) = &mut config.node.tls {
            tls.cert_path = base.join(&tls.cert_path);
            tls.key_path = base.join(&tls.key_path);
        }
        for model in &mut config.models {
            model.path = base.join(&model.path);
        }
        for module in config.tenants.iter_mut().flat_map(|t| t.modules.iter_mut()) {
            if let Some(path) = &mut module.path {
                *path = base.join(&*path);
            }
        }
        Ok(config)
    }

    /// Checks what the types alone cannot: uniqueness, and that every grant
    /// and module names something that exists.
    fn check(&self) -> Result<(), String> {
        if self.node.compile_memory_mib < 256 {
            return Err("compile_memory_mib is under 256: the node could compile no guest".to_owned());
        }
        if self.node.compile_timeout_ms == 0 {
            return Err("compile_timeout_ms is 0".to_owned());
        }
        let mut models = HashSet::new();
        for model in &self.models {
            if !models.insert((model.name.as_str(), model.version.as_str())) {
                return Err(format!("model `{}` version `{}` is configured twice", model.name, model.version));
            }
        }
        let mut tenants = HashSet::new();
        let mut keys = HashSet::new();
        for tenant in &self.tenants {
            let at = format!("tenant `{}`", tenant.id);
            if !tenants.insert(tenant.id.as_str()) {
                return Err(format!("{at} is configured twice"));
            }
            if tenant.key_sha256.is_empty() {
                return Err(format!("{at}: key_sha256 is empty, so nobody could call it"));
            }
            for key in &tenant.key_sha256 {
                if !keys.insert(key.0) {
                    return Err(format!("{at}: a key hash is listed twice or belongs to another tenant as well"));
                }
            }
            for grant in &tenant.grants {
                if !self.models.iter().any(|m| grant.covers(m.name.as_str(), m.version.as_str())) {
                    return Err(format!("{at}: grant `{grant}` names no configured model"));
                }
            }
            let mut modules = HashSet::new();
            for module in &tenant.modules {
                let at = format!("{at}, module `{}`", module.id);
                if !modules.insert(module.id.as_str()) {
                    return Err(format!("{at} is configured twice"));
                }
                // Which examples there are is the node's to say, when it
                // resolves the module.
                if module.path.is_some() == module.example.is_some() {
                    return Err(format!("{at}: give exactly one of `path` and `example`"));
                }
                for grant in &module.models {
                    let granted = self
                        .models
                        .iter()
                        .filter(|m| grant.covers(m.name.as_str(), m.version.as_str()))
                        .any(|m| tenant.grants.iter().any(|g| g.covers(m.name.as_str(), m.version.as_str())));
                    if !granted {
                        return Err(format!("{at}: model `{grant}` is not among the tenant's grants"));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn parse(text: &str) -> Result<NodeConfig, String> {
        NodeConfig::parse(text, Path::new("/etc/mantle"))
    }

    #[test]
    fn a_full_configuration_parses_and_paths_are_relative_to_it() {
        let config = parse(&format!(
            r#"
            [[model]]
            name = "efficientnet-lite0"
            path = "models/e.onnx"
            pin = {{ N = 1 }}

            [[tenant]]
            id = "acme"
            key_sha256 = ["{KEY}"]
            grants = ["efficientnet-lite0@1"]
            limits = {{ max_concurrent = 2 }}

            [[tenant.module]]
            id = "classify"
            path = "guests/c.wasm"
            models = ["efficientnet-lite0"]
            config = {{ top = "5" }}
            "#
        ))
        .expect("parses");
        assert_eq!(config.models[0].path, Path::new("/etc/mantle/models/e.onnx"));
        assert_eq!(config.models[0].version.as_str(), "1");
        let tenant = &config.tenants[0];
        assert_eq!(tenant.limits.max_concurrent, 2);
        assert_eq!(tenant.limits.max_queued, TenantLimits::default().max_queued);
        assert_eq!(tenant.modules[0].path.as_deref(), Some(Path::new("/etc/mantle/guests/c.wasm")));
    }

    #[test]
    fn mistakes_are_reported_at_the_field() {
        let unknown = parse("[node]\nshutdown_grace = 5\n").expect_err("unknown field");
        assert!(unknown.contains("line 2") && unknown.contains("unknown field `shutdown_grace`"), "{unknown}");

        let bad_id = parse(&format!("[[tenant]]\nid = \"Acme Corp\"\nkey_sha256 = [\"{KEY}\"]\n")).expect_err("bad id");
        assert!(bad_id.contains("line 2") && bad_id.contains("`Acme Corp` is not a valid id"), "{bad_id}");

        let bad_key = parse("[[tenant]]\nid = \"acme\"\nkey_sha256 = [\"secret\"]\n").expect_err("bad hash");
        assert!(bad_key.contains("line 3") && bad_key.contains("64 hex digits"), "{bad_key}");
    }

    #[test]
    fn a_limit_no_guest_could_run_within_is_reported_at_its_line_and_column() {
        let module = |limits: &str| {
            parse(&format!(
                "[[tenant]]\nid = \"a\"\nkey_sha256 = [\"{KEY}\"]\n\n[[tenant.module]]\nid = \"x\"\n\
                 example = \"text-embed\"\nlimits = {limits}\n"
            ))
        };
        module("{ memory_mib = 64, deadline_ms = 500 }").expect("usable limits");
        let memory = module("{ memory_mib = 0 }").expect_err("no memory");
        assert!(memory.contains("line 8, column 10") && memory.contains("outside 1 MiB..=4 GiB"), "{memory}");
        let deadline = module("{ deadline_ms = 0 }").expect_err("no time");
        assert!(deadline.contains("line 8, column 10") && deadline.contains("deadline is zero"), "{deadline}");

        let tenant =
            parse(&format!("[[tenant]]\nid = \"a\"\nkey_sha256 = [\"{KEY}\"]\n[tenant.limits]\nmax_concurrent = 0\n"))
                .expect_err("a tenant that can run nothing");
        assert!(tenant.contains("line 4") && tenant.contains("max_concurrent is 0"), "{tenant}");
    }

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

    #[test]
    fn grants_must_name_configured_models() {
        let ungranted = parse(&format!(
            "[[model]]\nname = \"m\"\npath = \"m.onnx\"\n[[tenant]]\nid = \"a\"\nkey_sha256 = [\"{KEY}\"]\n\
             [[tenant.module]]\nid = \"x\"\nexample = \"text-embed\"\nmodels = [\"m\"]\n"
        ))
        .expect_err("module model outside tenant grants");
        assert!(ungranted.contains("module `x`: model `m` is not among the tenant's grants"), "{ungranted}");

        let missing = parse(&format!("[[tenant]]\nid = \"a\"\nkey_sha256 = [\"{KEY}\"]\ngrants = [\"m@2\"]\n"))
            .expect_err("grant of nothing");
        assert!(missing.contains("grant `m@2` names no configured model"), "{missing}");
    }
}

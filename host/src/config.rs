//! The node configuration file: the models a node holds, its tenants, their
//! keys, grants and limits, and the guest modules they run, as the operator
//! writes them in TOML. Parsing and checking only; nothing is loaded here.
//!
//! Every table refuses unknown fields, and identifiers are checked while
//! parsing, so that a mistake is reported at its line and column.

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
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
    pub admin_token_sha256: Option<KeyHash>,
    /// Public keys (hex, from `mantle keygen`) whose signatures the node
    /// accepts on bundles; when there are any, unsigned bundles are refused.
    pub trusted_signers: Vec<String>,
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
    #[serde(default = "default_version")]
    pub version: Name,
    /// The `.onnx` file, relative to the configuration file.
    pub path: PathBuf,
    /// Named input dimensions fixed before optimizing, e.g. `{ N = 1 }`.
    #[serde(default)]
    pub pin: BTreeMap<String, usize>,
}

fn default_version() -> Name {
    Name("1".to_owned())
}

/// A tenant: who may call, what it may reach, and how much it may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: Id,
    /// SHA-256 of each API key the tenant may present, in hex. Only hashes
    /// are stored; `mantle key` makes a key and its hash.
    pub key_sha256: Vec<KeyHash>,
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
/// modules may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
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
        let module = crate::runtime::ModuleLimits::default();
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModuleLimitsConfig {
    /// Memory of one instance (linear memories, tables and `wasi:nn`
    /// tensors together), in MiB.
    pub memory_mib: Option<usize>,
    /// Wall-clock time for one request, in milliseconds.
    pub deadline_ms: Option<u64>,
}

impl ModuleLimitsConfig {
    /// The limits as the runtime applies them, with the defaults for what
    /// is left out.
    pub fn limits(&self) -> crate::runtime::ModuleLimits {
        let default = crate::runtime::ModuleLimits::default();
        crate::runtime::ModuleLimits {
            memory_bytes: self.memory_mib.map_or(default.memory_bytes, |mib| mib.saturating_mul(1 << 20)),
            deadline: self.deadline_ms.map_or(default.deadline, std::time::Duration::from_millis),
        }
    }

    /// The limits of a module a tenant ships, held to the tenant's
    /// ceilings: what is left out is the default or the ceiling, whichever
    /// is lower; asking for more than the ceiling is refused.
    pub fn limits_within(&self, ceiling: &TenantLimits) -> Result<crate::runtime::ModuleLimits, String> {
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
        Ok(crate::runtime::ModuleLimits {
            memory_bytes: limits.memory_bytes.min(ceiling.max_memory_mib.saturating_mul(1 << 20)),
            deadline: limits.deadline.min(std::time::Duration::from_millis(ceiling.max_deadline_ms)),
        })
    }
}

/// A tenant or module identifier: lowercase letters, digits, `-` and `_`,
/// starting with a letter or digit, at most 63 characters. It appears in
/// URLs and metric labels as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Id(pub(crate) String);

impl TryFrom<String> for Id {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let valid = text.len() <= 63
            && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if valid {
            Ok(Id(text))
        } else {
            Err(format!(
                "`{text}` is not a valid id: use 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
            ))
        }
    }
}

/// A model name or version: letters, digits, `.`, `-` and `_`, at most
/// 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Name(pub(crate) String);

impl TryFrom<String> for Name {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let valid = !text.is_empty()
            && text.len() <= 128
            && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if valid {
            Ok(Name(text))
        } else {
            Err(format!("`{text}` is not a valid model name or version: use letters, digits, `.`, `-` or `_`"))
        }
    }
}

/// A grant: `name` for every version of a model, or `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Grant {
    pub name: Name,
    pub version: Option<Name>,
}

impl TryFrom<String> for Grant {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.split_once('@') {
            None => Ok(Grant { name: Name::try_from(text)?, version: None }),
            Some((name, version)) => {
                Ok(Grant { name: Name::try_from(name.to_owned())?, version: Some(Name::try_from(version.to_owned())?) })
            }
        }
    }
}

impl Grant {
    /// Whether this grant covers version `version` of model `name`.
    pub fn covers(&self, name: &str, version: &str) -> bool {
        self.name.as_str() == name && self.version.as_ref().is_none_or(|v| v.as_str() == version)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            None => write!(f, "{}", self.name),
            Some(version) => write!(f, "{}@{version}", self.name),
        }
    }
}

/// The SHA-256 of an API key: 64 hex digits.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct KeyHash(pub [u8; 32]);

impl TryFrom<String> for KeyHash {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let mut hash = [0; 32];
        hex::decode_to_slice(text.trim(), &mut hash)
            .map_err(|_| "a key hash is the SHA-256 of the key in 64 hex digits (`mantle key` makes one)".to_owned())?;
        Ok(KeyHash(hash))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

macro_rules! string_newtype {
    ($($name:ident),*) => {$(
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

string_newtype!(Id, Name);

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
        for signer in &self.node.trusted_signers {
            crate::bundle::keys::parse_verifying_key(signer)
                .map_err(|e| format!("trusted_signers: `{signer}` is not a public key from `mantle keygen`: {e}"))?;
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
            check_tenant_limits(&tenant.limits).map_err(|m| format!("{at}: limits: {m}"))?;
            let mut modules = HashSet::new();
            for module in &tenant.modules {
                let at = format!("{at}, module `{}`", module.id);
                if !modules.insert(module.id.as_str()) {
                    return Err(format!("{at} is configured twice"));
                }
                match (&module.path, &module.example) {
                    (Some(_), None) => {}
                    (None, Some(example)) => {
                        if !crate::examples::EXAMPLES.iter().any(|e| e.name == example) {
                            let names: Vec<&str> = crate::examples::EXAMPLES.iter().map(|e| e.name).collect();
                            return Err(format!("{at}: there is no example `{example}`; the examples are {names:?}"));
                        }
                    }
                    _ => return Err(format!("{at}: give exactly one of `path` and `example`")),
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

fn check_tenant_limits(limits: &TenantLimits) -> Result<(), String> {
    if limits.max_concurrent == 0 {
        return Err("max_concurrent is 0, so no request could run".to_owned());
    }
    if limits.max_body_bytes == 0 {
        return Err("max_body_bytes is 0".to_owned());
    }
    if limits.infer_deadline_ms == 0 {
        return Err("infer_deadline_ms is 0".to_owned());
    }
    let ceiling = crate::runtime::ModuleLimits {
        memory_bytes: limits.max_memory_mib.saturating_mul(1 << 20),
        deadline: std::time::Duration::from_millis(limits.max_deadline_ms),
    };
    ceiling.validate().map_err(|m| format!("max_memory_mib and max_deadline_ms: {m}"))?;
    Ok(())
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

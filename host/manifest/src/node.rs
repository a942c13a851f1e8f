//! The node configuration file: the models a node holds, its tenants, their
//! keys, grants and limits, and the guest modules they run, as the operator
//! writes them in TOML. Parsing and checking only; nothing is loaded here.
//!
//! Every table refuses unknown fields, and identifiers are checked while
//! parsing, so that a mistake is reported at its line and column.

use crate::module::{ModuleDeclaration, ModuleLimitsConfig, ModuleSource};
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

/// A whole configuration file, checked: every name it uses is defined,
/// every tenant can be called, and nothing is configured twice. Built only
/// by [`NodeConfig::parse`] or from a [`RawNodeConfig`] with `TryFrom`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    node: NodeSettings,
    models: Vec<ModelConfig>,
    tenants: Vec<TenantConfig>,
}

/// A configuration file as written, before the checks that span tables.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNodeConfig {
    #[serde(default)]
    pub node: NodeSettings,
    /// `[[model]]` tables.
    #[serde(default, rename = "model")]
    pub models: Vec<ModelConfig>,
    /// `[[tenant]]` tables.
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<RawTenantConfig>,
}

/// Settings of the node as a whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// How long the node goes on serving after SIGTERM with `/readyz`
    /// answering 503, so that load balancers take it out of rotation
    /// before it stops accepting connections. SIGINT (Ctrl-C) skips it.
    pub drain_ms: u64,
    /// How long in-flight requests may take to finish once the node stops
    /// accepting connections, before it exits anyway.
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
    /// Run the initializer of a guest that exports one when its module is
    /// made, and start every request's instance from the snapshot taken
    /// after it. Off, such guests build their state on each request.
    pub pre_initialize: bool,
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
            // Kubernetes gives a pod 30 s from SIGTERM to SIGKILL by
            // default: 5 s of drain and 10 s of grace fit well within it.
            drain_ms: 5_000,
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
            pre_initialize: true,
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
    /// Most concurrent runs (each one row of the dimension pinned to 1)
    /// stacked into one; 1, the default, runs each alone.
    #[serde(default = "one")]
    pub max_batch: usize,
    /// How long a batch that is not full may wait for more runs once a
    /// thread is free for it, in microseconds.
    #[serde(default)]
    pub max_queue_delay_us: u64,
}

fn one() -> usize {
    1
}

/// The largest `max_batch` a model may have: each batch size up to it
/// that is a power of two gets a plan of its own.
pub const MAX_BATCH: usize = 64;

/// The longest `max_queue_delay_us`: a second.
pub const MAX_QUEUE_DELAY_US: u64 = 1_000_000;

/// A tenant, checked: who may call, what it may reach, and how much it may
/// use.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    id: Id,
    key_sha256: Vec<Sha256>,
    open: bool,
    grants: Vec<Grant>,
    limits: TenantLimits,
    modules: Vec<ModuleDeclaration>,
    follows: Vec<FollowConfig>,
}

impl TenantConfig {
    pub fn id(&self) -> &Id {
        &self.id
    }

    /// SHA-256 of each API key the tenant accepts.
    pub fn key_sha256(&self) -> &[Sha256] {
        &self.key_sha256
    }

    /// Whether requests that carry no key are this tenant's.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Models the tenant may use.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    pub fn limits(&self) -> &TenantLimits {
        &self.limits
    }

    /// The tenant's modules from the configuration.
    pub fn modules(&self) -> &[ModuleDeclaration] {
        &self.modules
    }

    /// The registry tags the node keeps deployed for the tenant.
    pub fn follows(&self) -> &[FollowConfig] {
        &self.follows
    }
}

/// A `[[tenant]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantConfig {
    pub id: Id,
    /// SHA-256 of each API key the tenant may present, in hex. Only hashes
    /// are stored; `mantle key` makes a key and its hash.
    #[serde(default)]
    pub key_sha256: Vec<Sha256>,
    /// Requests that carry no key are this tenant's: only the bundled
    /// examples' tenant, when a node serves them with no configuration.
    /// A configuration file cannot say so.
    #[serde(skip)]
    pub open: bool,
    /// Models the tenant may use, by `name` (every version) or
    /// `name@version`.
    #[serde(default)]
    pub grants: Vec<Grant>,
    #[serde(default)]
    pub limits: TenantLimits,
    /// `[[tenant.module]]` tables.
    #[serde(default, rename = "module", deserialize_with = "node_modules")]
    pub modules: Vec<ModuleDeclaration>,
    /// `[[tenant.follow]]` tables.
    #[serde(default, rename = "follow")]
    pub follows: Vec<FollowConfig>,
}

/// A `[[tenant.follow]]` table: a registry tag whose artifact the node
/// keeps deployed for the tenant, polling it for moves.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowConfig {
    /// `oci://HOST[:PORT]/REPO:TAG`.
    pub reference: String,
    /// How often the tag is looked up, in milliseconds; each poll waits a
    /// random tenth more or less, so that a fleet does not poll in step.
    #[serde(default = "default_follow_interval_ms")]
    pub interval_ms: u64,
    /// Plain HTTP instead of HTTPS: for a registry on loopback.
    #[serde(default)]
    pub insecure: bool,
    /// Registry credentials: a user name, with its password given in this
    /// file, or better in the environment variable `password_env` names,
    /// or in the file `password_file` names (relative to this file; a
    /// mounted secret, read when the node starts, trailing newline
    /// ignored).
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// The credentials are never printed.
impl std::fmt::Debug for FollowConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowConfig")
            .field("reference", &self.reference)
            .field("interval_ms", &self.interval_ms)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn default_follow_interval_ms() -> u64 {
    30_000
}

/// The shortest poll interval a follow may ask for: a registry is shared,
/// and a node polling it in a tight loop would be a nuisance to it.
pub const MIN_FOLLOW_INTERVAL_MS: u64 = 100;

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

/// A `[[tenant.module]]` table: a module declaration whose component is
/// `path` or `example`. Read through this form so that a table naming both
/// or neither is reported at its line.
#[derive(Deserialize)]
#[serde(try_from = "RawNodeModule")]
struct NodeModule(ModuleDeclaration);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeModule {
    id: Id,
    /// The component, relative to the configuration file.
    path: Option<PathBuf>,
    /// One of the example guests built into mantle, by name.
    example: Option<String>,
    #[serde(default)]
    models: Vec<Grant>,
    #[serde(default)]
    limits: ModuleLimitsConfig,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

impl TryFrom<RawNodeModule> for NodeModule {
    type Error = String;

    fn try_from(raw: RawNodeModule) -> Result<Self, String> {
        // Which examples there are is the node's to say, when it resolves
        // the module.
        let source = match (raw.path, raw.example) {
            (Some(path), None) => ModuleSource::File(path),
            (None, Some(example)) => ModuleSource::Builtin(example),
            _ => return Err(format!("module `{}`: give exactly one of `path` and `example`", raw.id)),
        };
        Ok(NodeModule(ModuleDeclaration {
            id: raw.id,
            source,
            models: raw.models,
            limits: raw.limits,
            config: raw.config,
        }))
    }
}

fn node_modules<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<ModuleDeclaration>, D::Error> {
    let modules = Vec::<NodeModule>::deserialize(deserializer)?;
    Ok(modules.into_iter().map(|NodeModule(module)| module).collect())
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
        let mut raw: RawNodeConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(tls) = &mut raw.node.tls {
            tls.cert_path = base.join(&tls.cert_path);
            tls.key_path = base.join(&tls.key_path);
        }
        for model in &mut raw.models {
            model.path = base.join(&model.path);
        }
        for module in raw.tenants.iter_mut().flat_map(|t| t.modules.iter_mut()) {
            if let ModuleSource::File(path) = &mut module.source {
                *path = base.join(&*path);
            }
        }
        for follow in raw.tenants.iter_mut().flat_map(|t| t.follows.iter_mut()) {
            if let Some(path) = &mut follow.password_file {
                *path = base.join(&*path);
            }
        }
        NodeConfig::try_from(raw)
    }

    /// Settings of the node as a whole.
    pub fn settings(&self) -> &NodeSettings {
        &self.node
    }

    /// The models the node holds.
    pub fn models(&self) -> &[ModelConfig] {
        &self.models
    }

    pub fn tenants(&self) -> &[TenantConfig] {
        &self.tenants
    }
}

impl TryFrom<RawNodeConfig> for NodeConfig {
    type Error = String;

    fn try_from(raw: RawNodeConfig) -> Result<Self, String> {
        check(&raw)?;
        let tenants = raw
            .tenants
            .into_iter()
            .map(|t| TenantConfig {
                id: t.id,
                key_sha256: t.key_sha256,
                open: t.open,
                grants: t.grants,
                limits: t.limits,
                modules: t.modules,
                follows: t.follows,
            })
            .collect();
        Ok(NodeConfig { node: raw.node, models: raw.models, tenants })
    }
}

/// Checks what the types alone cannot: uniqueness, that every tenant can
/// be called, and that every grant and module names something that exists.
fn check(config: &RawNodeConfig) -> Result<(), String> {
    if config.node.compile_memory_mib < 256 {
        return Err("compile_memory_mib is under 256: the node could compile no guest".to_owned());
    }
    if config.node.compile_timeout_ms == 0 {
        return Err("compile_timeout_ms is 0".to_owned());
    }
    let mut models = HashSet::new();
    for model in &config.models {
        if !models.insert((model.name.as_str(), model.version.as_str())) {
            return Err(format!("model `{}` version `{}` is configured twice", model.name, model.version));
        }
        if !(1..=MAX_BATCH).contains(&model.max_batch) {
            return Err(format!("model `{}`: max_batch must be from 1 to {MAX_BATCH}", model.name));
        }
        if model.max_queue_delay_us > MAX_QUEUE_DELAY_US {
            return Err(format!("model `{}`: max_queue_delay_us must be at most {MAX_QUEUE_DELAY_US}", model.name));
        }
    }
    if config.tenants.iter().filter(|t| t.open).count() > 1 {
        return Err("more than one tenant takes requests without a key".to_owned());
    }
    let mut tenants = HashSet::new();
    let mut keys = HashSet::new();
    for tenant in &config.tenants {
        let at = format!("tenant `{}`", tenant.id);
        if !tenants.insert(tenant.id.as_str()) {
            return Err(format!("{at} is configured twice"));
        }
        if tenant.key_sha256.is_empty() && !tenant.open {
            return Err(format!("{at}: key_sha256 is empty, so nobody could call it"));
        }
        for key in &tenant.key_sha256 {
            if !keys.insert(key.0) {
                return Err(format!("{at}: a key hash is listed twice or belongs to another tenant as well"));
            }
        }
        for grant in &tenant.grants {
            if !config.models.iter().any(|m| grant.covers(m.name.as_str(), m.version.as_str())) {
                return Err(format!("{at}: grant `{grant}` names no configured model"));
            }
        }
        let mut follows = HashSet::new();
        for follow in &tenant.follows {
            let at = format!("{at}, follow `{}`", follow.reference);
            if !follow.reference.starts_with("oci://") {
                return Err(format!("{at}: the reference must be oci://HOST[:PORT]/REPO:TAG"));
            }
            if !follows.insert(follow.reference.as_str()) {
                return Err(format!("{at} is configured twice"));
            }
            if follow.interval_ms < MIN_FOLLOW_INTERVAL_MS {
                return Err(format!("{at}: interval_ms is under {MIN_FOLLOW_INTERVAL_MS}"));
            }
            let given = [follow.password.is_some(), follow.password_env.is_some(), follow.password_file.is_some()];
            match (&follow.username, given.iter().filter(|g| **g).count()) {
                (None, 0) | (Some(_), 1) => {}
                (None, _) => return Err(format!("{at}: a password needs a username")),
                (Some(_), 0) => return Err(format!("{at}: give the password, password_env or password_file")),
                (Some(_), _) => {
                    return Err(format!("{at}: give one of password, password_env and password_file"));
                }
            }
        }
        let mut modules = HashSet::new();
        for module in &tenant.modules {
            let at = format!("{at}, module `{}`", module.id);
            if !modules.insert(module.id.as_str()) {
                return Err(format!("{at} is configured twice"));
            }
            for grant in &module.models {
                let granted = config
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
        assert_eq!(config.models()[0].path, Path::new("/etc/mantle/models/e.onnx"));
        assert_eq!(config.models()[0].version.as_str(), "1");
        let tenant = &config.tenants()[0];
        assert_eq!(tenant.limits().max_concurrent, 2);
        assert_eq!(tenant.limits().max_queued, TenantLimits::default().max_queued);
        assert_eq!(tenant.modules()[0].source, ModuleSource::File("/etc/mantle/guests/c.wasm".into()));
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
    fn a_module_names_its_component_once_and_the_mistake_is_located() {
        let module = |source: &str| {
            parse(&format!(
                "[[tenant]]\nid = \"a\"\nkey_sha256 = [\"{KEY}\"]\n\n[[tenant.module]]\nid = \"x\"\n{source}"
            ))
        };
        let both = module("path = \"x.wasm\"\nexample = \"text-embed\"\n").expect_err("path and example");
        assert!(both.contains("line 5") && both.contains("give exactly one of `path` and `example`"), "{both}");
        let neither = module("").expect_err("no component");
        assert!(neither.contains("line 5") && neither.contains("give exactly one"), "{neither}");
        let example = module("example = \"text-embed\"\n").expect("an example");
        assert_eq!(example.tenants()[0].modules()[0].source, ModuleSource::Builtin("text-embed".to_owned()));
    }

    #[test]
    fn a_followed_tag_is_checked_and_its_password_never_printed() {
        let follow = |table: &str| {
            parse(&format!("[[tenant]]\nid = \"a\"\nkey_sha256 = [\"{KEY}\"]\n\n[[tenant.follow]]\n{table}"))
        };
        let config = follow(
            "reference = \"oci://registry.example:5000/acme/vision:stable\"\nusername = \"ci\"\npassword = \"hunter2\"\n",
        )
        .expect("a follow");
        let followed = &config.tenants()[0].follows()[0];
        assert_eq!((followed.interval_ms, followed.insecure), (30_000, false), "the defaults");
        assert!(!format!("{followed:?}").contains("hunter2"));
        let from_file =
            follow("reference = \"oci://r.example/a:1\"\nusername = \"ci\"\npassword_file = \"secrets/registry\"\n")
                .expect("a password file");
        let password_file = from_file.tenants()[0].follows()[0].password_file.as_deref();
        assert_eq!(password_file, Some(Path::new("/etc/mantle/secrets/registry")), "relative to node.toml");
        for (table, expected) in [
            ("reference = \"registry.example/acme/vision:1\"\n", "must be oci://"),
            ("reference = \"oci://r.example/a:1\"\ninterval_ms = 10\n", "interval_ms is under 100"),
            ("reference = \"oci://r.example/a:1\"\npassword = \"x\"\n", "a password needs a username"),
            ("reference = \"oci://r.example/a:1\"\nusername = \"ci\"\n", "give the password, password_env or"),
            (
                "reference = \"oci://r.example/a:1\"\nusername = \"ci\"\npassword = \"x\"\npassword_env = \"P\"\n",
                "one of password, password_env and password_file",
            ),
            (
                "reference = \"oci://r.example/a:1\"\nusername = \"ci\"\npassword_env = \"P\"\npassword_file = \"p\"\n",
                "one of password, password_env and password_file",
            ),
            ("reference = \"oci://r.example/a:1\"\ntag = \"1\"\n", "unknown field `tag`"),
        ] {
            let refused = follow(table).expect_err(table);
            assert!(refused.contains(expected), "{table}: {refused}");
        }
        let twice =
            follow("reference = \"oci://r.example/a:1\"\n\n[[tenant.follow]]\nreference = \"oci://r.example/a:1\"\n")
                .expect_err("the same tag twice");
        assert!(twice.contains("configured twice"), "{twice}");
    }

    #[test]
    fn only_the_bundled_examples_have_a_tenant_without_keys() {
        // A configuration file cannot open a tenant to requests without a key.
        let open = parse("[[tenant]]\nid = \"a\"\nopen = true\n").expect_err("open is not a field");
        assert!(open.contains("unknown field `open`"), "{open}");
        let keyless = parse("[[tenant]]\nid = \"a\"\n").expect_err("no keys");
        assert!(keyless.contains("key_sha256 is empty, so nobody could call it"), "{keyless}");

        // Built in code, a tenant may take requests without a key, and so
        // may only one.
        let tenant = |id: &str| RawTenantConfig {
            id: Id::new(id).expect("an id"),
            key_sha256: Vec::new(),
            open: true,
            grants: Vec::new(),
            limits: TenantLimits::default(),
            modules: Vec::new(),
            follows: Vec::new(),
        };
        let one = RawNodeConfig { tenants: vec![tenant("demo")], ..RawNodeConfig::default() };
        let config = NodeConfig::try_from(one).expect("one open tenant");
        assert!(config.tenants()[0].is_open());
        let two = RawNodeConfig { tenants: vec![tenant("a"), tenant("b")], ..RawNodeConfig::default() };
        let refused = NodeConfig::try_from(two).expect_err("two open tenants");
        assert!(refused.contains("more than one tenant takes requests without a key"), "{refused}");
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

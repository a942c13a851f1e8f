//! What a node serves, resolved once at start-up from its configuration:
//! the models it holds, and its tenants with their keys, grants, limits and
//! compiled guest modules. Per request there is only a lookup left to do.
//! Deployments change it while it runs ([`deploy`]), kept on disk by the
//! [`store`].

pub mod deploy;
mod model_cache;
pub mod store;

pub use model_cache::ModelCache;

use mantle_manifest::node::{ModelConfig, ModuleConfig, NodeConfig, NodeSettings, TenantConfig, TenantLimits};
use mantle_models::{LoadError, LoadOptions, Model};
use mantle_runtime::{GuestModule, IsolatedCompiler, ModuleSpec, Runtime, RuntimeConfig, SetupError};
use mantle_types::{Grant, Sha256};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// Why a node could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Model(#[from] LoadError),
    #[error("cannot read module `{module}` of tenant `{tenant}` from {}", path.display())]
    ReadModule { tenant: String, module: String, path: PathBuf, source: std::io::Error },
    #[error("tenant `{tenant}`")]
    Module { tenant: String, source: SetupError },
    #[error("module `{module}` of tenant `{tenant}`: there is no example `{example}`; the examples are {known:?}")]
    UnknownExample { tenant: String, module: String, example: String, known: Vec<&'static str> },
    #[error(transparent)]
    Runtime(#[from] SetupError),
}

/// One version of a model the node holds.
#[derive(Debug)]
pub struct HeldModel {
    pub name: String,
    pub version: String,
    pub model: Arc<Model>,
}

/// A tenant as the node serves it.
pub struct Tenant {
    pub id: String,
    pub limits: TenantLimits,
    key_hashes: Vec<Sha256>,
    /// The model versions the tenant was granted, in configuration order.
    models: Vec<Arc<HeldModel>>,
    /// Modules from the configuration.
    modules: BTreeMap<String, Arc<GuestModule>>,
    /// What the tenant's active deployments serve, swapped whole when a
    /// deployment changes: a request holds what it started with.
    deployed: RwLock<Arc<Deployed>>,
}

/// What a tenant's active deployments serve.
#[derive(Default)]
pub struct Deployed {
    /// Guest modules by id.
    pub modules: BTreeMap<String, Arc<GuestModule>>,
    /// Model versions served through KServe, as the deployments' version
    /// policies chose them.
    pub models: Vec<Arc<HeldModel>>,
}

impl Tenant {
    /// The SHA-256 of each API key the tenant accepts.
    pub fn key_hashes(&self) -> &[Sha256] {
        &self.key_hashes
    }

    /// The module `id`, configured or deployed.
    pub fn module(&self, id: &str) -> Option<Arc<GuestModule>> {
        if let Some(module) = self.modules.get(id) {
            return Some(Arc::clone(module));
        }
        self.deployed().modules.get(id).cloned()
    }

    /// Whether the configuration defines module `id`.
    pub fn configures_module(&self, id: &str) -> bool {
        self.modules.contains_key(id)
    }

    /// Replaces what the tenant's active deployments serve.
    pub fn set_deployed(&self, deployed: Deployed) {
        *self.deployed.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(deployed);
    }

    fn deployed(&self) -> Arc<Deployed> {
        Arc::clone(&self.deployed.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// A model the tenant may use through KServe, by name and, optionally,
    /// version. Without a version it is the configured grant listed last,
    /// or else the highest deployed version.
    pub fn model(&self, name: &str, version: Option<&str>) -> Option<Arc<HeldModel>> {
        let wanted = |m: &&Arc<HeldModel>| m.name == name && version.is_none_or(|v| v == m.version);
        if let Some(model) = self.models.iter().rev().find(wanted) {
            return Some(Arc::clone(model));
        }
        let deployed = self.deployed();
        deployed.models.iter().filter(wanted).max_by(|a, b| compare_versions(&a.version, &b.version)).cloned()
    }

    /// Every version of `name` the tenant may use through KServe.
    pub fn versions(&self, name: &str) -> Vec<String> {
        let deployed = self.deployed();
        let all = self.models.iter().chain(deployed.models.iter());
        let mut versions: Vec<String> = all.filter(|m| m.name == name).map(|m| m.version.clone()).collect();
        versions.sort_by(|a, b| compare_versions(a, b));
        versions.dedup();
        versions
    }
}

/// Orders versions as people number them: `2` before `10`, `1.2` before
/// `1.10`; parts that are not numbers compare as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<(u64, String)> {
        v.split(['.', '-', '_']).map(|p| (p.parse().unwrap_or(u64::MAX), p.to_owned())).collect()
    };
    parts(a).cmp(&parts(b))
}

/// A guest built into the program that runs the node; `node.toml` names
/// one by `example = "name"`.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinGuest {
    pub name: &'static str,
    pub wasm: &'static [u8],
}

/// How a node is built, besides its configuration.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions<'a> {
    /// Where compiled code is kept, so that a restart compiles nothing.
    pub compiled_dir: &'a Path,
    /// A program whose `compile-guest` command compiles guests in a child
    /// process, within the node's compile limits; `None` compiles here.
    pub compile_with: Option<&'a Path>,
    /// The guests `example = "..."` may name.
    pub builtin_guests: &'a [BuiltinGuest],
    /// The tenant of requests that carry no key, if any: only for serving
    /// the bundled examples with no configuration.
    pub open_tenant: Option<&'a str>,
}

/// Everything a node serves.
pub struct Node {
    pub runtime: Runtime,
    tenants: BTreeMap<String, Arc<Tenant>>,
    /// The tenant of requests that carry no key, only when serving the
    /// bundled examples with no configuration.
    open_tenant: Option<Arc<Tenant>>,
    pub settings: NodeSettings,
    /// Every model the node holds, configured or deployed, once each.
    models: ModelCache,
}

impl Node {
    /// Loads every model and compiles every module of `config`.
    pub fn build(config: &NodeConfig, options: &BuildOptions<'_>) -> Result<Node, NodeError> {
        let compile_with = options.compile_with;
        let settings = &config.node;
        let compiler = compile_with.map(|program| IsolatedCompiler {
            program: program.to_owned(),
            memory_bytes: settings.compile_memory_mib.saturating_mul(1 << 20),
            timeout: std::time::Duration::from_millis(settings.compile_timeout_ms),
        });
        // Each tenant's share of the instance slots, so that no tenant can
        // take them all.
        let tenants = u32::try_from(config.tenants.len()).unwrap_or(u32::MAX).max(1);
        let runtime = Runtime::new(&RuntimeConfig {
            max_instances: settings.max_instances,
            instances_per_tenant: Some((settings.max_instances / tenants).max(1)),
            inference_threads: (settings.inference_threads > 0).then_some(settings.inference_threads),
            compiler,
        })?;
        // Each model loads and optimizes on one core, independently of the
        // others: loading them side by side shortens a node's start.
        let models = ModelCache::default();
        let held = config.models.par_iter().map(|model| load_model(&models, model)).collect::<Result<Vec<_>, _>>()?;
        let mut tenants = BTreeMap::new();
        for tenant in &config.tenants {
            let built = build_tenant(&runtime, options, tenant, &held)?;
            tenants.insert(built.id.clone(), Arc::new(built));
        }
        let open_tenant = options.open_tenant.and_then(|id| tenants.get(id)).cloned();
        Ok(Node { runtime, tenants, open_tenant, settings: settings.clone(), models })
    }

    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    /// The tenant of requests without a key, if the node has one.
    pub fn open_tenant(&self) -> Option<&Arc<Tenant>> {
        self.open_tenant.as_ref()
    }

    /// The node's models, which deployments load theirs through.
    pub fn models(&self) -> &ModelCache {
        &self.models
    }
}

fn load_model(models: &ModelCache, config: &ModelConfig) -> Result<Arc<HeldModel>, LoadError> {
    let options = LoadOptions { pinned_dims: config.pin.clone() };
    let model = models.get_or_load_file(config.name.as_str(), &config.path, &options)?;
    Ok(Arc::new(HeldModel { name: config.name.to_string(), version: config.version.to_string(), model }))
}

fn covered<'a>(grants: &'a [Grant], held: &'a [Arc<HeldModel>]) -> impl Iterator<Item = &'a Arc<HeldModel>> {
    held.iter().filter(|m| grants.iter().any(|g| g.covers(&m.name, &m.version)))
}

fn build_tenant(
    runtime: &Runtime,
    options: &BuildOptions<'_>,
    config: &TenantConfig,
    held: &[Arc<HeldModel>],
) -> Result<Tenant, NodeError> {
    let tenant = config.id.to_string();
    let models: Vec<Arc<HeldModel>> = covered(&config.grants, held).cloned().collect();
    let mut modules = BTreeMap::new();
    for module in &config.modules {
        let compiled = build_module(runtime, options, &tenant, module, &models)?;
        modules.insert(module.id.to_string(), Arc::new(compiled));
    }
    Ok(Tenant {
        id: tenant,
        limits: config.limits,
        key_hashes: config.key_sha256.clone(),
        models,
        modules,
        deployed: RwLock::default(),
    })
}

/// The names a guest loads `held` models by: `name@version`, and `name`
/// for the version listed last.
pub fn module_grants<'a>(held: impl IntoIterator<Item = &'a Arc<HeldModel>>) -> BTreeMap<String, Arc<Model>> {
    let mut grants = BTreeMap::new();
    for held in held {
        grants.insert(format!("{}@{}", held.name, held.version), Arc::clone(&held.model));
        grants.insert(held.name.clone(), Arc::clone(&held.model));
    }
    grants
}

fn build_module(
    runtime: &Runtime,
    options: &BuildOptions<'_>,
    tenant: &str,
    config: &ModuleConfig,
    granted: &[Arc<HeldModel>],
) -> Result<GuestModule, NodeError> {
    let spec = ModuleSpec {
        id: config.id.to_string(),
        tenant: tenant.to_owned(),
        grants: module_grants(covered(&config.models, granted)),
        limits: config.limits.limits(),
        config: config.config.clone(),
    };
    let wasm = match (&config.path, &config.example) {
        (Some(path), _) => std::borrow::Cow::Owned(std::fs::read(path).map_err(|source| NodeError::ReadModule {
            tenant: tenant.to_owned(),
            module: config.id.to_string(),
            path: path.clone(),
            source,
        })?),
        (None, example) => {
            let name = example.as_deref().unwrap_or_default();
            let builtins = options.builtin_guests;
            let example = builtins.iter().find(|e| e.name == name).ok_or_else(|| NodeError::UnknownExample {
                tenant: tenant.to_owned(),
                module: config.id.to_string(),
                example: name.to_owned(),
                known: builtins.iter().map(|e| e.name).collect(),
            })?;
            std::borrow::Cow::Borrowed(example.wasm)
        }
    };
    let started = std::time::Instant::now();
    let (module, cached) = runtime
        .load_module_cached(spec, &wasm, options.compiled_dir)
        .map_err(|source| NodeError::Module { tenant: tenant.to_owned(), source })?;
    tracing::debug!(%tenant, module = %config.id, cached, elapsed = ?started.elapsed(), "loaded the module");
    Ok(module)
}

//! Deployments on a running node: a bundle is checked, compiled, stored and
//! made the active version of its deployment for a tenant, in that order, so
//! that nothing half-checked is ever stored or served; and at start-up the
//! active versions are restored from the store without recompiling.

use crate::store::{Deployment, Store, StoreError};
use crate::{Deployed, HeldModel, Node, Tenant, compare_versions, module_grants};
use ed25519_dalek::VerifyingKey;
use mantle_bundle::{Bundle, BundleError};
use mantle_manifest::bundle::ModelPolicy;
use mantle_manifest::signer::PublicKey;
use mantle_models::{LoadError, LoadOptions};
use mantle_runtime::{GuestModule, ModuleSpec, SetupError};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Why a deployment change was refused. The node's active state is then
/// what it was before.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("the node has no tenant `{0}`")]
    UnknownTenant(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("model `{model}` of the bundle does not load")]
    Model { model: String, source: LoadError },
    #[error(transparent)]
    Module(#[from] SetupError),
    #[error("module `{module}` asks for more than the tenant may have: {message}")]
    Limits { module: String, message: String },
    #[error("module `{module}` is already served by {owner}")]
    Conflict { module: String, owner: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a deployment change did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub tenant: String,
    pub deployment: String,
    pub version: String,
    pub active: bool,
    pub modules: Vec<String>,
    /// Modules whose compiled code came from the cache.
    pub cache_hits: usize,
}

/// The deployments of a node, on disk and in service.
pub struct Deployments {
    store: Store,
    compiled_dir: PathBuf,
    /// When not empty, only bundles signed by one of these are accepted.
    trusted: Vec<VerifyingKey>,
    /// The compiled active version of each (tenant, deployment).
    active: Mutex<BTreeMap<(String, String), Prepared>>,
    /// One change at a time, so that the store and what is served agree.
    changing: tokio::sync::Mutex<()>,
}

/// A version compiled and ready to serve.
struct Prepared {
    version: String,
    modules: Vec<Arc<GuestModule>>,
    /// The model versions its policy serves through KServe.
    models: Vec<Arc<HeldModel>>,
    cache_hits: usize,
}

impl Deployments {
    /// Opens the store under `data_dir`. When there are `trusted` signers,
    /// unsigned bundles and other signers are refused.
    pub fn open(data_dir: &Path, trusted: &[PublicKey]) -> Result<Deployments, DeployError> {
        let trusted = trusted.iter().map(|key| *key.verifying_key()).collect();
        Ok(Deployments {
            store: Store::open(data_dir)?,
            compiled_dir: data_dir.join("compiled"),
            trusted,
            active: Mutex::default(),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    /// Where compiled code is kept, for every module the node serves.
    pub fn compiled_dir(&self) -> &Path {
        &self.compiled_dir
    }

    /// Serves the active version of every stored deployment. A deployment
    /// that no longer loads (its tenant is gone, the store is damaged) is
    /// logged and skipped: the node serves everything else.
    pub fn restore(&self, node: &Node) -> Result<Vec<Outcome>, DeployError> {
        let mut restored = Vec::new();
        for deployment in self.store.deployments()? {
            let Some(stored) = deployment.active_version() else { continue };
            let prepared = self.tenant(node, &deployment.tenant).and_then(|tenant| {
                let bundle = self.store.load(stored)?;
                self.prepare(node, tenant, &bundle, &deployment.name)
            });
            match prepared {
                Ok(prepared) => {
                    restored.push(self.install(node, &deployment.tenant, &deployment.name, prepared));
                }
                Err(e) => tracing::error!(
                    tenant = %deployment.tenant, deployment = %deployment.name, version = %stored.version,
                    "cannot restore the active version: {}", mantle_types::untrusted::escaped(&e.to_string())
                ),
            }
        }
        Ok(restored)
    }

    /// Checks, compiles and stores the packed bundle `archive` for `tenant`,
    /// and makes it the active version if `activate`.
    pub async fn deploy(
        &self,
        node: &Node,
        tenant_id: &str,
        archive: &[u8],
        activate: bool,
    ) -> Result<Outcome, DeployError> {
        let _one_at_a_time = self.changing.lock().await;
        tokio::task::block_in_place(|| {
            let tenant = self.tenant(node, tenant_id)?;
            let bundle = Bundle::unpack(archive)?;
            if !self.trusted.is_empty() {
                bundle.require_signer(&self.trusted)?;
            }
            let name = bundle.manifest.bundle.name.to_string();
            let prepared = self.prepare(node, tenant, &bundle, &name)?;
            let stored = self.store.store_version(tenant_id, &bundle)?;
            if !activate {
                return Ok(outcome(tenant_id, &name, &prepared, false));
            }
            self.store.activate(tenant_id, &name, &stored.version)?;
            Ok(self.install(node, tenant_id, &name, prepared))
        })
    }

    /// Makes a stored version the active one: a rollback, or a roll forward.
    pub async fn activate(
        &self,
        node: &Node,
        tenant_id: &str,
        name: &str,
        version: &str,
    ) -> Result<Outcome, DeployError> {
        let _one_at_a_time = self.changing.lock().await;
        tokio::task::block_in_place(|| {
            let tenant = self.tenant(node, tenant_id)?;
            let deployment = self.deployment(tenant_id, name)?;
            let stored = deployment.version(version).ok_or_else(|| StoreError::UnknownVersion {
                tenant: tenant_id.to_owned(),
                name: name.to_owned(),
                version: version.to_owned(),
            })?;
            let bundle = self.store.load(stored)?;
            let prepared = self.prepare(node, tenant, &bundle, name)?;
            self.store.activate(tenant_id, name, version)?;
            Ok(self.install(node, tenant_id, name, prepared))
        })
    }

    /// Stops serving deployment `name` and forgets all its versions.
    pub async fn delete(&self, node: &Node, tenant_id: &str, name: &str) -> Result<(), DeployError> {
        let _one_at_a_time = self.changing.lock().await;
        self.store.delete(tenant_id, name)?;
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        active.remove(&(tenant_id.to_owned(), name.to_owned()));
        if let Some(tenant) = node.tenant(tenant_id) {
            tenant.set_deployed(deployed_of(&active, tenant_id));
        }
        Ok(())
    }

    /// Every stored deployment.
    pub fn list(&self) -> Result<Vec<Deployment>, DeployError> {
        Ok(self.store.deployments()?)
    }

    fn tenant<'a>(&self, node: &'a Node, id: &str) -> Result<&'a Arc<Tenant>, DeployError> {
        node.tenant(id).ok_or_else(|| DeployError::UnknownTenant(id.to_owned()))
    }

    fn deployment(&self, tenant: &str, name: &str) -> Result<Deployment, DeployError> {
        let found = self.store.deployments()?.into_iter().find(|d| d.tenant == tenant && d.name == name);
        found.ok_or_else(|| StoreError::UnknownDeployment { tenant: tenant.to_owned(), name: name.to_owned() }.into())
    }

    /// Loads the bundle's models and compiles its modules for `tenant`:
    /// everything that can fail, before anything changes.
    fn prepare(&self, node: &Node, tenant: &Tenant, bundle: &Bundle, name: &str) -> Result<Prepared, DeployError> {
        let manifest = &bundle.manifest;
        // A module id is a route: it may not shadow a configured module or
        // another deployment's.
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        for module in &manifest.modules {
            let id = module.id.as_str();
            if tenant.configures_module(id) {
                return Err(DeployError::Conflict {
                    module: id.to_owned(),
                    owner: "the node configuration".to_owned(),
                });
            }
            let other = active
                .iter()
                .find(|((t, n), p)| *t == tenant.id && n != name && p.modules.iter().any(|m| m.id() == id));
            if let Some(((_, owner), _)) = other {
                return Err(DeployError::Conflict { module: id.to_owned(), owner: format!("deployment `{owner}`") });
            }
        }
        drop(active);
        // The tenant's ceilings, before any work is done.
        let limits = manifest
            .modules
            .iter()
            .map(|module| {
                module
                    .limits
                    .limits_within(&tenant.limits)
                    .map_err(|message| DeployError::Limits { module: module.id.to_string(), message })
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Models load side by side, each optimizing on one core.
        let held = manifest
            .models
            .par_iter()
            .map(|model| {
                // The manifest's digest was checked against the file when
                // the bundle was opened; the cache keys by the bytes.
                let options = LoadOptions { pinned_dims: model.pin.clone() };
                let (loaded, _) = node
                    .models()
                    .get_or_load(model.name.as_str(), bundle.file(&model.file), &options)
                    .map_err(|source| DeployError::Model { model: model.name.to_string(), source })?;
                Ok(Arc::new(HeldModel {
                    name: model.name.to_string(),
                    version: model.version.to_string(),
                    model: loaded,
                }))
            })
            .collect::<Result<Vec<_>, DeployError>>()?;
        let mut modules = Vec::new();
        let mut cache_hits = 0;
        for (module, limits) in manifest.modules.iter().zip(limits) {
            let granted = held.iter().filter(|h| module.models.iter().any(|g| g.covers(&h.name, &h.version)));
            let spec = ModuleSpec {
                id: module.id.to_string(),
                tenant: tenant.id.clone(),
                grants: module_grants(granted),
                limits,
                config: module.config.clone(),
            };
            let wasm = bundle.file(&module.file);
            let (compiled, cached) = node.runtime.load_module_cached(spec, wasm, &self.compiled_dir)?;
            cache_hits += usize::from(cached);
            modules.push(Arc::new(compiled));
        }
        let models = served_models(&manifest.bundle.kserve_versions, &held);
        Ok(Prepared { version: manifest.bundle.version.to_string(), modules, models, cache_hits })
    }

    /// Serves `prepared` as the active version of `name`: the tenant's
    /// modules are swapped whole, and requests in flight finish on the
    /// modules they started with.
    fn install(&self, node: &Node, tenant_id: &str, name: &str, prepared: Prepared) -> Outcome {
        let result = outcome(tenant_id, name, &prepared, true);
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        active.insert((tenant_id.to_owned(), name.to_owned()), prepared);
        if let Some(tenant) = node.tenant(tenant_id) {
            tenant.set_deployed(deployed_of(&active, tenant_id));
        }
        tracing::info!(
            tenant = %tenant_id, deployment = %name, version = %result.version,
            modules = result.modules.len(), cache_hits = result.cache_hits, "activated"
        );
        result
    }
}

fn outcome(tenant: &str, name: &str, prepared: &Prepared, active: bool) -> Outcome {
    Outcome {
        tenant: tenant.to_owned(),
        deployment: name.to_owned(),
        version: prepared.version.clone(),
        active,
        modules: prepared.modules.iter().map(|m| m.id().to_owned()).collect(),
        cache_hits: prepared.cache_hits,
    }
}

/// What `tenant`'s active deployments serve, together.
fn deployed_of(active: &BTreeMap<(String, String), Prepared>, tenant: &str) -> Deployed {
    let mut deployed = Deployed::default();
    for (_, prepared) in active.iter().filter(|((t, _), _)| t == tenant) {
        deployed.modules.extend(prepared.modules.iter().map(|m| (m.id().to_owned(), Arc::clone(m))));
        deployed.models.extend(prepared.models.iter().cloned());
    }
    deployed
}

/// The model versions `policy` serves through KServe.
fn served_models(policy: &ModelPolicy, held: &[Arc<HeldModel>]) -> Vec<Arc<HeldModel>> {
    match policy {
        ModelPolicy::None => Vec::new(),
        ModelPolicy::All => held.to_vec(),
        ModelPolicy::Versions(versions) => {
            held.iter().filter(|m| versions.iter().any(|v| v.as_str() == m.version)).cloned().collect()
        }
        ModelPolicy::Latest => {
            let mut latest: BTreeMap<&str, &Arc<HeldModel>> = BTreeMap::new();
            for model in held {
                let newer = latest
                    .get(model.name.as_str())
                    .is_none_or(|l| compare_versions(&model.version, &l.version).is_gt());
                if newer {
                    latest.insert(&model.name, model);
                }
            }
            latest.into_values().cloned().collect()
        }
    }
}

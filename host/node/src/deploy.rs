//! Deployments on a running node. A change is made in two steps: a
//! version is prepared (the bundle is checked, its models loaded and its
//! modules compiled, and nothing changes), then committed (stored, then
//! swapped in as what the tenant serves). Nothing half-checked is ever
//! stored or served. At start-up the active versions are restored from
//! the store without recompiling.

use crate::resolve::{ResolveError, Scope, resolve_module};
use crate::store::{Deployment, Store, StoreError};
use crate::{HeldModel, Node, Tenant, compare_versions};
use mantle_bundle::{Bundle, BundleError};
use mantle_manifest::bundle::ModelPolicy;
use mantle_models::{LoadError, LoadOptions};
use mantle_runtime::GuestModule;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a deployment change was refused. The node's active state is then
/// what it was before.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("the node has no tenant `{0}`")]
    UnknownTenant(String),
    #[error("this node keeps no deployments: it was started without a data directory")]
    NoStore,
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("model `{model}` of the bundle does not load")]
    Model { model: String, source: LoadError },
    #[error(transparent)]
    Module(#[from] ResolveError),
    #[error("module `{module}` is already served by {owner}")]
    Conflict { module: String, owner: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot fetch the bundle from the registry")]
    Registry(#[from] mantle_oci::OciError),
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

/// A version of a deployment, prepared and ready to serve.
pub(crate) struct Version {
    version: String,
    modules: Vec<Arc<GuestModule>>,
    /// The model versions its policy serves through KServe.
    models: Vec<Arc<HeldModel>>,
    cache_hits: usize,
}

/// What a tenant's active deployments serve: the active version of each
/// deployment, and its modules indexed by id for the request path.
#[derive(Default)]
pub(crate) struct Active {
    versions: BTreeMap<String, Arc<Version>>,
    modules: BTreeMap<String, Arc<GuestModule>>,
}

impl Active {
    fn new(versions: BTreeMap<String, Arc<Version>>) -> Active {
        let modules = versions
            .values()
            .flat_map(|version| version.modules.iter())
            .map(|module| (module.id().to_owned(), Arc::clone(module)))
            .collect();
        Active { versions, modules }
    }

    pub(crate) fn module(&self, id: &str) -> Option<Arc<GuestModule>> {
        self.modules.get(id).cloned()
    }

    /// Every module the active deployments serve, by id.
    pub(crate) fn modules(&self) -> impl Iterator<Item = &Arc<GuestModule>> {
        self.modules.values()
    }

    /// Whether no deployment is active.
    pub(crate) fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The model versions the active deployments serve through KServe.
    pub(crate) fn models(&self) -> impl Iterator<Item = &Arc<HeldModel>> {
        self.versions.values().flat_map(|version| version.models.iter())
    }

    /// The deployment other than `except` that serves module `id`, if any.
    fn owner_of(&self, id: &str, except: &str) -> Option<&str> {
        let mut others = self.versions.iter().filter(|(name, _)| *name != except);
        others.find(|(_, version)| version.modules.iter().any(|m| m.id() == id)).map(|(name, _)| name.as_str())
    }
}

impl Node {
    /// Serves the active version of every stored deployment. A deployment
    /// that no longer loads (its tenant is gone, the store is damaged) is
    /// logged and skipped: the node serves everything else.
    pub async fn restore(&self) -> Result<Vec<Outcome>, DeployError> {
        let _one_at_a_time = self.changing.lock().await;
        tokio::task::block_in_place(|| {
            let store = self.store()?;
            let mut restored = Vec::new();
            for deployment in store.deployments()? {
                let Some(stored) = deployment.active_version() else { continue };
                let prepared = self.deploying_tenant(&deployment.tenant).and_then(|tenant| {
                    let bundle = store.load(stored)?;
                    Ok((tenant, self.prepare(tenant, &bundle, &deployment.name)?))
                });
                match prepared {
                    Ok((tenant, version)) => restored.push(self.commit(tenant, &deployment.name, version)),
                    Err(e) => tracing::error!(
                        tenant = %deployment.tenant, deployment = %deployment.name, version = %stored.version,
                        "cannot restore the active version: {}", mantle_types::untrusted::escaped(&e.to_string())
                    ),
                }
            }
            Ok(restored)
        })
    }

    /// Checks, compiles and stores the packed bundle `archive` for `tenant`,
    /// and makes it the active version if `activate`.
    pub async fn deploy(&self, tenant_id: &str, archive: &[u8], activate: bool) -> Result<Outcome, DeployError> {
        let bundle = tokio::task::block_in_place(|| Bundle::unpack(archive))?;
        self.deploy_bundle(tenant_id, &bundle, activate).await
    }

    /// Checks, compiles and stores an opened `bundle` for `tenant`, and
    /// makes it the active version if `activate`. The version already
    /// active, with the same files and signer, is left as it is.
    pub async fn deploy_bundle(
        &self,
        tenant_id: &str,
        bundle: &Bundle,
        activate: bool,
    ) -> Result<Outcome, DeployError> {
        let _one_at_a_time = self.changing.lock().await;
        tokio::task::block_in_place(|| {
            let store = self.store()?;
            let tenant = self.deploying_tenant(tenant_id)?;
            if !self.trusted.is_empty() {
                bundle.require_signer(&self.trusted)?;
            }
            let name = bundle.manifest.bundle.name.to_string();
            if activate && let Some(unchanged) = self.already_active(store, tenant, &name, bundle)? {
                return Ok(unchanged);
            }
            let version = self.prepare(tenant, bundle, &name)?;
            let stored = store.store_version(tenant_id, bundle)?;
            if !activate {
                return Ok(outcome(tenant_id, &name, &version, false));
            }
            store.activate(tenant_id, &name, &stored.version)?;
            Ok(self.commit(tenant, &name, version))
        })
    }

    /// What deployment `name` serves, if it serves exactly `bundle` now.
    fn already_active(
        &self,
        store: &Store,
        tenant: &Tenant,
        name: &str,
        bundle: &Bundle,
    ) -> Result<Option<Outcome>, DeployError> {
        let Some(deployment) = store.deployments()?.into_iter().find(|d| d.tenant == tenant.id && d.name == name)
        else {
            return Ok(None);
        };
        let Some(stored) = deployment.active_version() else { return Ok(None) };
        if !stored.holds(bundle) {
            return Ok(None);
        }
        let active = tenant.active();
        Ok(active.versions.get(name).map(|version| outcome(&tenant.id, name, version, true)))
    }

    /// The stored blob of SHA-256 `digest`, if the node has it intact.
    pub fn stored_blob(&self, digest: &mantle_types::Sha256) -> Option<Vec<u8>> {
        self.store.as_ref()?.blob(&digest.to_string()).ok()
    }

    /// Makes a stored version the active one: a rollback, or a roll forward.
    pub async fn activate(&self, tenant_id: &str, name: &str, version: &str) -> Result<Outcome, DeployError> {
        let _one_at_a_time = self.changing.lock().await;
        tokio::task::block_in_place(|| {
            let store = self.store()?;
            let tenant = self.deploying_tenant(tenant_id)?;
            let deployment = self.deployment(tenant_id, name)?;
            let stored = deployment.version(version).ok_or_else(|| StoreError::UnknownVersion {
                tenant: tenant_id.to_owned(),
                name: name.to_owned(),
                version: version.to_owned(),
            })?;
            let bundle = store.load(stored)?;
            let prepared = self.prepare(tenant, &bundle, name)?;
            store.activate(tenant_id, name, version)?;
            Ok(self.commit(tenant, name, prepared))
        })
    }

    /// Stops serving deployment `name` and forgets all its versions.
    pub async fn delete(&self, tenant_id: &str, name: &str) -> Result<(), DeployError> {
        let _one_at_a_time = self.changing.lock().await;
        self.store()?.delete(tenant_id, name)?;
        if let Some(tenant) = self.tenant(tenant_id) {
            let mut versions = tenant.active().versions.clone();
            versions.remove(name);
            tenant.set_active(Active::new(versions));
        }
        Ok(())
    }

    /// Every stored deployment.
    pub fn deployments(&self) -> Result<Vec<Deployment>, DeployError> {
        Ok(self.store()?.deployments()?)
    }

    pub(crate) fn store(&self) -> Result<&Store, DeployError> {
        self.store.as_ref().ok_or(DeployError::NoStore)
    }

    fn deploying_tenant(&self, id: &str) -> Result<&Arc<Tenant>, DeployError> {
        self.tenant(id).ok_or_else(|| DeployError::UnknownTenant(id.to_owned()))
    }

    fn deployment(&self, tenant: &str, name: &str) -> Result<Deployment, DeployError> {
        let found = self.store()?.deployments()?.into_iter().find(|d| d.tenant == tenant && d.name == name);
        found.ok_or_else(|| StoreError::UnknownDeployment { tenant: tenant.to_owned(), name: name.to_owned() }.into())
    }

    /// Loads the bundle's models and compiles its modules for `tenant`, as
    /// version of deployment `name`: everything that can fail, and
    /// nothing that changes what is stored or served.
    fn prepare(&self, tenant: &Tenant, bundle: &Bundle, name: &str) -> Result<Version, DeployError> {
        let manifest = &bundle.manifest;
        // A module id is a route: it may not shadow a configured module or
        // another deployment's.
        let active = tenant.active();
        for module in &manifest.modules {
            let id = module.id.as_str();
            if tenant.configures_module(id) {
                return Err(DeployError::Conflict {
                    module: id.to_owned(),
                    owner: "the node configuration".to_owned(),
                });
            }
            if let Some(owner) = active.owner_of(id, name) {
                return Err(DeployError::Conflict { module: id.to_owned(), owner: format!("deployment `{owner}`") });
            }
        }
        // The tenant's ceilings, before any work is done.
        for module in &manifest.modules {
            if let Err(message) = module.limits.limits_within(&tenant.limits) {
                return Err(ResolveError::Limits { module: module.id.to_string(), message }.into());
            }
        }
        // Models load side by side, each optimizing on one core.
        let held = manifest
            .models
            .par_iter()
            .map(|model| {
                // The manifest's digest was checked against the file when
                // the bundle was opened; the cache keys by the bytes.
                let options = LoadOptions { pinned_dims: model.pin.clone(), batching: None };
                let (loaded, _) = self
                    .models
                    .get_or_load(model.name.as_str(), bundle.file(&model.file), &options)
                    .map_err(|source| DeployError::Model { model: model.name.to_string(), source })?;
                Ok(Arc::new(HeldModel {
                    name: model.name.to_string(),
                    version: model.version.to_string(),
                    model: loaded,
                }))
            })
            .collect::<Result<Vec<_>, DeployError>>()?;
        // A tenant's modules are granted among its bundle's models and held
        // to its ceilings.
        let scope = Scope {
            tenant: &tenant.id,
            models: &held,
            ceiling: Some(&tenant.limits),
            builtin_guests: &[],
            bundle: Some(bundle),
            compiled_dir: self.compiled_dir.as_deref(),
        };
        let mut modules = Vec::new();
        let mut cache_hits = 0;
        for declaration in &manifest.modules {
            let resolved = resolve_module(&self.runtime, declaration, &scope)?;
            cache_hits += usize::from(resolved.cached);
            modules.push(Arc::new(resolved.module));
        }
        let models = served_models(&manifest.bundle.kserve_versions, &held);
        Ok(Version { version: manifest.bundle.version.to_string(), modules, models, cache_hits })
    }

    /// Serves `version` as the active version of deployment `name`: the
    /// tenant's deployed modules are swapped whole, and requests in flight
    /// finish on the modules they started with.
    fn commit(&self, tenant: &Tenant, name: &str, version: Version) -> Outcome {
        let result = outcome(&tenant.id, name, &version, true);
        let mut versions = tenant.active().versions.clone();
        versions.insert(name.to_owned(), Arc::new(version));
        tenant.set_active(Active::new(versions));
        tracing::info!(
            tenant = %tenant.id, deployment = %name, version = %result.version,
            modules = result.modules.len(), cache_hits = result.cache_hits, "activated"
        );
        result
    }
}

fn outcome(tenant: &str, name: &str, version: &Version, active: bool) -> Outcome {
    Outcome {
        tenant: tenant.to_owned(),
        deployment: name.to_owned(),
        version: version.version.clone(),
        active,
        modules: version.modules.iter().map(|m| m.id().to_owned()).collect(),
        cache_hits: version.cache_hits,
    }
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

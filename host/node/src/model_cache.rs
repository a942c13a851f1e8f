//! One cache of loaded models for the whole node, keyed by the SHA-256 of
//! the model file and the dimensions pinned at load: a model that
//! `node.toml` and any number of bundles of any tenants name is read,
//! optimized and held once.

use mantle_models::{BatchPolicy, LoadError, LoadOptions, Model, read_model_file};
use mantle_types::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// What makes two loaded models the same: the file's bytes, the pins and
/// how it batches.
type ModelKey = (Sha256, BTreeMap<String, usize>, Option<BatchPolicy>);

/// The models the node holds, each once. Entries are weak: a model lives
/// as long as a tenant's configuration or an active deployment uses it.
#[derive(Default)]
pub struct ModelCache {
    /// One slot per key. A slot's own lock is held while its model loads,
    /// so that a second caller of the same key (two entries of one bundle
    /// that share a file) waits for that load instead of repeating it.
    slots: Mutex<HashMap<ModelKey, Arc<Mutex<Weak<Model>>>>>,
    /// How long each load took, kept until the metrics take them.
    load_times: Mutex<Vec<Duration>>,
}

/// Load times kept for the metrics at most; past it, the oldest go. A node
/// nobody scrapes must not grow with every deployment.
const MAX_KEPT_LOAD_TIMES: usize = 1024;

impl ModelCache {
    /// The model in `bytes`, pinned with `options`: the one already loaded
    /// if any, else loaded now as `name`. The flag says whether it was
    /// loaded now.
    pub fn get_or_load(
        &self,
        name: &str,
        bytes: &[u8],
        options: &LoadOptions,
    ) -> Result<(Arc<Model>, bool), LoadError> {
        let digest = Sha256::of(bytes);
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget the slots of models no one holds any more; one being
            // loaded is held by its loader.
            slots.retain(|_, slot| {
                Arc::strong_count(slot) > 1 || slot.lock().unwrap_or_else(PoisonError::into_inner).strong_count() > 0
            });
            Arc::clone(slots.entry((digest, options.pinned_dims.clone(), options.batching)).or_default())
        };
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(model) = held.upgrade() {
            tracing::debug!(model = %name, sha256 = %digest, "the model is already loaded: sharing it");
            return Ok((model, false));
        }
        let started = Instant::now();
        let model = Arc::new(Model::from_bytes(name, bytes, options)?);
        let elapsed = started.elapsed();
        tracing::info!(
            model = %name, sha256 = %digest, elapsed_ms = elapsed.as_millis() as u64,
            "loaded and optimized the model"
        );
        let mut times = self.load_times.lock().unwrap_or_else(PoisonError::into_inner);
        if times.len() >= MAX_KEPT_LOAD_TIMES {
            times.remove(0);
        }
        times.push(elapsed);
        drop(times);
        *held = Arc::downgrade(&model);
        Ok((model, true))
    }

    /// How long each model loaded since the last call took: read, optimize
    /// and plan, once per model the cache did not hold.
    pub fn take_load_times(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.load_times.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The model in the file at `path`, as [`ModelCache::get_or_load`].
    pub fn get_or_load_file(&self, name: &str, path: &Path, options: &LoadOptions) -> Result<Arc<Model>, LoadError> {
        let bytes = read_model_file(name, path)?;
        let (model, _) = self.get_or_load(name, &bytes, options).map_err(|e| e.in_file(path))?;
        Ok(model)
    }
}

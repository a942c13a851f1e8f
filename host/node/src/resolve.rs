//! The one place where a declared module becomes a module that can serve:
//! its component is found, its grants are bound to loaded models, its
//! limits are settled, and it is compiled (or its compiled code is read
//! from the cache). The node's configuration, deployed bundles, the
//! bundled examples and `mantle run` all come through here.

use crate::{BuiltinGuest, HeldModel};
use mantle_bundle::Bundle;
use mantle_manifest::module::{ModuleDeclaration, ModuleSource};
use mantle_manifest::node::TenantLimits;
use mantle_models::Model;
use mantle_runtime::{ComponentBytes, GuestModule, ModuleSpec, Runtime, SetupError};
use mantle_types::Sha256;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a declared module could not be made ready to serve. Each names
/// the module.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read module `{module}` from {}", path.display())]
    Read { module: String, path: PathBuf, source: std::io::Error },
    #[error("module `{module}`: there is no example `{name}`; the examples are {known:?}")]
    UnknownBuiltin { module: String, name: String, known: Vec<&'static str> },
    #[error("module `{module}`: its component `{file}` is a file of a bundle, but no bundle declared it")]
    NoBundle { module: String, file: String },
    #[error("module `{module}` asks for more than the tenant may have: {message}")]
    Limits { module: String, message: String },
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// What a declaration is resolved against: who runs it, what it may be
/// granted, what bounds it, and where its component is found.
#[derive(Clone, Copy)]
pub struct Scope<'a> {
    /// The tenant the module runs as.
    pub tenant: &'a str,
    /// The models the declaration's grants may name: the tenant's grants
    /// for a configured module, the bundle's models for a bundled one.
    pub models: &'a [Arc<HeldModel>],
    /// The ceilings of the tenant, for a module the tenant ships itself;
    /// `None` for one the operator declares.
    pub ceiling: Option<&'a TenantLimits>,
    /// The guests built into the program, for [`ModuleSource::Builtin`].
    pub builtin_guests: &'a [BuiltinGuest],
    /// The bundle that declares the module, for [`ModuleSource::Bundled`].
    pub bundle: Option<&'a Bundle>,
    /// Where compiled code is kept; `None` compiles without keeping it.
    pub compiled_dir: Option<&'a Path>,
}

/// A module ready to serve, and whether its compiled code came from the
/// cache.
pub struct Resolved {
    pub module: GuestModule,
    pub cached: bool,
}

/// Turns `declaration` into a module of `scope.tenant` that `runtime` can
/// serve.
pub fn resolve_module(
    runtime: &Runtime,
    declaration: &ModuleDeclaration,
    scope: &Scope<'_>,
) -> Result<Resolved, ResolveError> {
    let limits = match scope.ceiling {
        Some(ceiling) => declaration
            .limits
            .limits_within(ceiling)
            .map_err(|message| ResolveError::Limits { module: declaration.id.to_string(), message })?,
        None => declaration.limits.limits(),
    };
    let (wasm, digest) = component(declaration, scope)?;
    let granted =
        scope.models.iter().filter(|held| declaration.models.iter().any(|g| g.covers(&held.name, &held.version)));
    let spec = ModuleSpec {
        id: declaration.id.to_string(),
        tenant: scope.tenant.to_owned(),
        grants: guest_names(granted),
        limits,
        config: declaration.config.clone(),
    };
    let started = std::time::Instant::now();
    let component = match digest {
        Some(digest) => ComponentBytes::hashed(&wasm, digest),
        None => ComponentBytes::new(&wasm),
    };
    let (module, cached) = runtime.load_component(spec, component, scope.compiled_dir)?;
    tracing::debug!(
        tenant = %scope.tenant, module = %declaration.id, cached, elapsed = ?started.elapsed(), "resolved the module"
    );
    Ok(Resolved { module, cached })
}

/// The bytes of the declaration's component, and their digest if it is
/// known already.
fn component<'a>(
    declaration: &ModuleDeclaration,
    scope: &Scope<'a>,
) -> Result<(Cow<'a, [u8]>, Option<Sha256>), ResolveError> {
    let module = || declaration.id.to_string();
    match &declaration.source {
        ModuleSource::File(path) => {
            let bytes = std::fs::read(path).map_err(|source| ResolveError::Read {
                module: module(),
                path: path.clone(),
                source,
            })?;
            Ok((Cow::Owned(bytes), None))
        }
        ModuleSource::Builtin(name) => {
            let builtins = scope.builtin_guests;
            let guest =
                builtins.iter().find(|guest| guest.name == name).ok_or_else(|| ResolveError::UnknownBuiltin {
                    module: module(),
                    name: name.clone(),
                    known: builtins.iter().map(|g| g.name).collect(),
                })?;
            Ok((Cow::Borrowed(guest.wasm), Some(guest.digest)))
        }
        // Opening the bundle made sure that every file its manifest names
        // is in it.
        ModuleSource::Bundled(file) => {
            let bytes = scope.bundle.map(|bundle| (Cow::Borrowed(bundle.file(file)), None));
            bytes.ok_or_else(|| ResolveError::NoBundle { module: module(), file: file.to_string() })
        }
    }
}

/// The names a guest loads `held` models by: `name@version`, and `name`
/// for the version listed last.
fn guest_names<'a>(held: impl IntoIterator<Item = &'a Arc<HeldModel>>) -> BTreeMap<String, Arc<Model>> {
    let mut grants = BTreeMap::new();
    for held in held {
        grants.insert(format!("{}@{}", held.name, held.version), Arc::clone(&held.model));
        grants.insert(held.name.clone(), Arc::clone(&held.model));
    }
    grants
}

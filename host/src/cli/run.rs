//! `mantle run`: one request through a guest, offline, from a file or stdin.

use super::{Failure, key_value};
use anyhow::Context;
use clap::Args;
use mantle::bundle::{Bundle, keys};
use mantle::manifest::module::{ModuleDeclaration, ModuleLimitsConfig, ModuleSource};
use mantle::models::LoadOptions;
use mantle::node::resolve::{Scope, resolve_module};
use mantle::node::{HeldModel, ModelCache};
use mantle::runtime::{GuestModule, ModuleLimits, Request, Runtime, RuntimeConfig};
use mantle::types::{Grant, Id, Name};
use mantle::untrusted::escaped;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The tenant a module runs as offline.
const LOCAL_TENANT: &str = "local";

/// Run a guest module once, offline: the input is the request body, the
/// response body is the output.
#[derive(Args)]
#[command(
    after_help = "Example:\n  mantle run image_classify.wasm \\\n    --model efficientnet-lite0=models/efficientnet-lite0/model.onnx \\\n    --pin efficientnet-lite0:N=1 --input models/samples/chelsea.png"
)]
pub struct RunArgs {
    /// The guest component (a .wasm file built for wasm32-wasip2).
    #[arg(required_unless_present = "bundle")]
    module: Option<PathBuf>,
    /// Run a module of a bundle (a packed file, a directory with
    /// mantle.toml, or oci://HOST[:PORT]/REPO:TAG in a registry) with its
    /// models, limits and config values.
    #[arg(long, value_name = "FILE|DIR|oci://...", conflicts_with_all = ["module", "models", "pins"])]
    bundle: Option<PathBuf>,
    /// The module of the bundle to run, when it has several.
    #[arg(long = "module", value_name = "ID", requires = "bundle")]
    module_id: Option<String>,
    /// Require the bundle to be signed by this public key (from `mantle
    /// keygen`). Repeat to trust several.
    #[arg(long, value_name = "KEY.pub", requires = "bundle")]
    trust: Vec<PathBuf>,
    /// Grant the guest a model: NAME=PATH.onnx. Repeat for several models.
    #[arg(long = "model", value_name = "NAME=PATH", value_parser = key_value)]
    models: Vec<(String, String)>,
    /// The request body: a file, or - for stdin.
    #[arg(long, short, value_name = "FILE|-", default_value = "-")]
    input: String,
    /// Where the response body goes: a file, or - for stdout.
    #[arg(long, short, value_name = "FILE|-", default_value = "-")]
    output: String,
    /// Fix a named dimension of a granted model before it is optimized:
    /// MODEL:DIM=SIZE, e.g. efficientnet-lite0:N=1. A fixed shape runs
    /// faster; inputs must then have exactly that size. Repeatable.
    #[arg(long = "pin", value_name = "MODEL:DIM=SIZE", value_parser = pinned_dim)]
    pins: Vec<(String, String, usize)>,
    /// A configuration value the guest reads with config-get: KEY=VALUE.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
    config: Vec<(String, String)>,
    /// The request path the guest sees.
    #[arg(long, default_value = "/")]
    path: String,
    /// The query string the guest sees, without the leading `?`.
    #[arg(long, default_value = "")]
    query: String,
    /// The request method the guest sees.
    #[arg(long, default_value = "POST")]
    method: String,
    /// A request header the guest sees: NAME=VALUE. Repeat for several.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = key_value)]
    headers: Vec<(String, String)>,
    /// The guest's memory limit, in MiB (a bundle's manifest sets its own).
    #[arg(long, value_name = "MIB", default_value_t = ModuleLimits::default().memory_bytes >> 20)]
    memory_mib: usize,
    /// The guest's deadline, in milliseconds (a bundle's manifest sets its
    /// own).
    #[arg(long, value_name = "MS", default_value_t = ModuleLimits::default().deadline.as_millis() as u64)]
    timeout_ms: u64,
    /// Keep the guest's compiled code here: the next run of the same
    /// component compiles nothing. [default: mantle/compiled in the user's
    /// cache directory, such as ~/.cache/mantle/compiled]
    #[arg(long, value_name = "DIR", env = "MANTLE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile the guest afresh, and keep nothing.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
    /// How to reach the registry of an oci:// bundle.
    #[command(flatten)]
    access: super::registry::AccessArgs,
}

pub async fn run(args: RunArgs) -> Result<(), Failure> {
    let runtime = Runtime::new(&RuntimeConfig {
        max_instances: 4,
        compiler: Some(super::isolated_compiler()?),
        ..RuntimeConfig::default()
    })?;
    let models = ModelCache::default();
    let compiled_dir = compiled_dir(&args);
    let bundle = match &args.bundle {
        Some(source) => Some(open_bundle(source, &args.access).await?),
        None => None,
    };
    let module = tokio::task::block_in_place(|| match (&bundle, &args.module) {
        (Some((bundle, source)), _) => from_bundle(&args, &runtime, &models, bundle, source, compiled_dir.as_deref()),
        (None, Some(module)) => from_module(&args, &runtime, &models, module, compiled_dir.as_deref()),
        (None, None) => Err(anyhow::anyhow!("give a module or --bundle").into()),
    })?;
    let body = read_input(&args.input)?;
    let request = Request {
        method: args.method,
        path: args.path,
        query: args.query,
        headers: args.headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v.into_bytes())).collect(),
        body,
    };
    let request_id = format!("run-{}", std::process::id());
    let response = runtime
        .handle(&module, request, &request_id)
        .await
        .map_err(|e| Failure::Guest(format!("{e} (a node would answer {})", mantle::server::status::of_guest(&e))))?;
    if !(200..300).contains(&response.status) {
        // The body is the guest's: it reaches the terminal escaped.
        return Err(Failure::Guest(format!(
            "the guest answered {}: {}",
            response.status,
            escaped(&String::from_utf8_lossy(&response.body))
        )));
    }
    write_output(&args.output, &response.body)?;
    Ok(())
}

/// The module at `path`, granted the models of `--model`, with the limits
/// and config values of the command line.
fn from_module(
    args: &RunArgs,
    runtime: &Runtime,
    models: &ModelCache,
    path: &Path,
    compiled_dir: Option<&Path>,
) -> Result<GuestModule, Failure> {
    for (model, ..) in &args.pins {
        if !args.models.iter().any(|(name, _)| name == model) {
            return Err(anyhow::anyhow!("--pin names model `{model}`, which no --model grants").into());
        }
    }
    let mut held = Vec::new();
    let mut grants = Vec::new();
    for (name, model_path) in &args.models {
        let checked = Name::new(name.as_str()).map_err(|e| anyhow::anyhow!("--model {name}: {e}"))?;
        let options = LoadOptions {
            pinned_dims: args
                .pins
                .iter()
                .filter(|(model, ..)| model == name)
                .map(|(_, dim, size)| (dim.clone(), *size))
                .collect(),
            batching: None,
        };
        let model = models.get_or_load_file(name, model_path.as_ref(), &options)?;
        held.push(Arc::new(HeldModel { name: name.clone(), version: Name::first_version().to_string(), model }));
        grants.push(Grant::every_version(checked));
    }
    let limits = ModuleLimitsConfig::new(Some(args.memory_mib), Some(args.timeout_ms))
        .map_err(|e| anyhow::anyhow!("--memory-mib and --timeout-ms: {e}"))?;
    let declaration = ModuleDeclaration {
        id: module_id(path),
        source: ModuleSource::File(path.to_owned()),
        models: grants,
        limits,
        config: args.config.iter().cloned().collect(),
    };
    let scope = local_scope(&held, None, compiled_dir);
    // Every refusal names the module, and a missing file its path.
    Ok(resolve_module(runtime, &declaration, &scope)?.module)
}

/// The bundle `source` names, a file, a directory or an oci:// reference,
/// opened and checked; and how to name it in errors.
async fn open_bundle(source: &Path, access: &super::registry::AccessArgs) -> Result<(Bundle, String), Failure> {
    let shown = source.display().to_string();
    let Some(reference) = source.to_str().filter(|s| s.starts_with(mantle::oci::registry::SCHEME)) else {
        let bundle = tokio::task::block_in_place(|| Bundle::open(source))
            .with_context(|| format!("cannot open the bundle {shown}"))?;
        return Ok((bundle, shown));
    };
    let parsed = mantle::oci::registry::parse_reference(reference)?;
    let pulled = mantle::oci::registry::Registry::new(&access.access_to(&parsed)?)
        .pull(&parsed)
        .await
        .with_context(|| format!("cannot pull {reference}"))?;
    let bundle =
        tokio::task::block_in_place(|| pulled.packed.open()).with_context(|| format!("refusing {reference}"))?;
    Ok((bundle, shown))
}

/// A module of `bundle` (from `source`), granted the bundle's models it
/// names, with the manifest's limits and config values (`--config` adds to
/// them).
fn from_bundle(
    args: &RunArgs,
    runtime: &Runtime,
    models: &ModelCache,
    bundle: &Bundle,
    source: &str,
    compiled_dir: Option<&Path>,
) -> Result<GuestModule, Failure> {
    if !args.trust.is_empty() {
        let trusted = args.trust.iter().map(|p| keys::read_verifying_key(p)).collect::<Result<Vec<_>, _>>()?;
        bundle.require_signer(&trusted).with_context(|| format!("refusing the bundle {source}"))?;
    }
    let manifest = &bundle.manifest;
    let ids = || manifest.modules.iter().map(|m| m.id.to_string()).collect::<Vec<_>>().join(", ");
    let module = match &args.module_id {
        Some(id) => manifest
            .modules
            .iter()
            .find(|m| m.id.as_str() == id)
            .ok_or_else(|| anyhow::anyhow!("the bundle has no module `{id}`; it has {}", ids()))?,
        None => match manifest.modules.as_slice() {
            [only] => only,
            _ => return Err(anyhow::anyhow!("the bundle has modules {}: choose one with --module", ids()).into()),
        },
    };
    // Only the models the module may load are loaded.
    let mut held = Vec::new();
    for model in &manifest.models {
        if !module.models.iter().any(|g| g.covers(model.name.as_str(), model.version.as_str())) {
            continue;
        }
        let options = LoadOptions { pinned_dims: model.pin.clone(), batching: None };
        let (loaded, _) = models.get_or_load(model.name.as_str(), bundle.file(&model.file), &options)?;
        held.push(Arc::new(HeldModel {
            name: model.name.to_string(),
            version: model.version.to_string(),
            model: loaded,
        }));
    }
    let mut declaration = module.clone();
    declaration.config.extend(args.config.iter().cloned());
    let scope = local_scope(&held, Some(bundle), compiled_dir);
    let resolved =
        resolve_module(runtime, &declaration, &scope).with_context(|| format!("cannot run the bundle {source}"))?;
    Ok(resolved.module)
}

/// What a module run offline is resolved against: tenant `local`, the
/// models given, no ceiling but the runtime's, and the compiled-code cache
/// in `compiled_dir`.
fn local_scope<'a>(
    held: &'a [Arc<HeldModel>],
    bundle: Option<&'a Bundle>,
    compiled_dir: Option<&'a Path>,
) -> Scope<'a> {
    Scope { tenant: LOCAL_TENANT, models: held, ceiling: None, builtin_guests: &[], bundle, compiled_dir }
}

/// Where compiled guests are kept between runs: `--cache-dir`, or
/// `mantle/compiled` in the user's cache directory; none with
/// `--no-cache`, or when the user has no cache directory. A directory made
/// here is the user's alone: code loaded from it runs in this process.
fn compiled_dir(args: &RunArgs) -> Option<PathBuf> {
    if args.no_cache {
        return None;
    }
    let dir = args.cache_dir.clone().or_else(|| Some(dirs::cache_dir()?.join("mantle").join("compiled")))?;
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        if let Err(e) = builder.create(&dir) {
            tracing::warn!(dir = %dir.display(), "compiling without a cache: {e}");
            return None;
        }
    }
    Some(dir)
}

/// Parses `MODEL:DIM=SIZE`.
fn pinned_dim(text: &str) -> Result<(String, String, usize), String> {
    let parsed = text.split_once(':').and_then(|(model, rest)| {
        let (dim, size) = rest.split_once('=')?;
        let size = size.parse().ok()?;
        (!model.is_empty() && !dim.is_empty()).then(|| (model.to_owned(), dim.to_owned(), size))
    });
    parsed.ok_or_else(|| format!("expected MODEL:DIM=SIZE, got `{text}`"))
}

/// The module's id, from its file's name: `image_classify.wasm` runs as
/// `image_classify`. What an id may not hold becomes `-`.
fn module_id(path: &Path) -> Id {
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let cleaned: String = stem
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' { c } else { '-' })
        .take(63)
        .collect();
    let cleaned = cleaned.trim_start_matches('-');
    Id::new(cleaned).or_else(|_| Id::new("module")).expect("`module` is a valid id")
}

fn read_input(input: &str) -> anyhow::Result<Vec<u8>> {
    if input == "-" {
        let mut body = Vec::new();
        std::io::stdin().read_to_end(&mut body).context("cannot read the request body from stdin")?;
        Ok(body)
    } else {
        std::fs::read(input).with_context(|| format!("cannot read input {input}"))
    }
}

fn write_output(output: &str, body: &[u8]) -> anyhow::Result<()> {
    if output == "-" {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(body).and_then(|()| stdout.flush()).context("cannot write the response to stdout")
    } else {
        std::fs::write(output, body).with_context(|| format!("cannot write output {output}"))
    }
}

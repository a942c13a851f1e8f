//! `mantle run`: one request through a guest, offline, from a file or stdin.

use super::{Failure, key_value};
use anyhow::Context;
use clap::Args;
use mantle::bundle::{Bundle, keys};
use mantle::models::{LoadOptions, Model, ModelRegistry};
use mantle::node::{HeldModel, module_grants};
use mantle::runtime::{ModuleLimits, ModuleSpec, Request, Runtime, RuntimeConfig};
use mantle::untrusted::escaped;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// Run a module of a bundle (a packed file or a directory with
    /// mantle.toml) with its models, limits and config values.
    #[arg(long, value_name = "FILE|DIR", conflicts_with_all = ["module", "models", "pins"])]
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
}

pub async fn run(args: RunArgs) -> Result<(), Failure> {
    let (spec, wasm, source) = match (&args.bundle, &args.module) {
        (Some(bundle), _) => tokio::task::block_in_place(|| from_bundle(&args, bundle))?,
        (None, Some(module)) => from_module(&args, module)?,
        (None, None) => return Err(anyhow::anyhow!("give a module or --bundle").into()),
    };
    let body = read_input(&args.input)?;
    let runtime = Runtime::new(&RuntimeConfig {
        max_instances: 4,
        compiler: Some(super::isolated_compiler()?),
        ..RuntimeConfig::default()
    })?;
    let module = tokio::task::block_in_place(|| runtime.load_module(spec, &wasm))
        .with_context(|| format!("cannot load {source}"))?;
    let request = Request {
        method: args.method,
        path: args.path,
        query: String::new(),
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
/// and config values of the command line; and how to name it in errors.
fn from_module(args: &RunArgs, path: &Path) -> Result<(ModuleSpec, Vec<u8>, String), Failure> {
    let wasm = std::fs::read(path).with_context(|| format!("cannot read module {}", path.display()))?;
    let mut registry = ModelRegistry::new();
    let mut grants = BTreeMap::new();
    for (model, ..) in &args.pins {
        if !args.models.iter().any(|(name, _)| name == model) {
            return Err(anyhow::anyhow!("--pin names model `{model}`, which no --model grants").into());
        }
    }
    for (name, model_path) in &args.models {
        let options = LoadOptions {
            pinned_dims: args
                .pins
                .iter()
                .filter(|(model, ..)| model == name)
                .map(|(_, dim, size)| (dim.clone(), *size))
                .collect(),
        };
        let model = registry.load(name, model_path.as_ref(), &options)?;
        grants.insert(name.clone(), model);
    }
    let spec = ModuleSpec {
        id: module_name(path),
        tenant: LOCAL_TENANT.to_owned(),
        grants,
        limits: ModuleLimits {
            memory_bytes: args.memory_mib.saturating_mul(1 << 20),
            deadline: Duration::from_millis(args.timeout_ms),
        },
        config: args.config.iter().cloned().collect(),
    };
    Ok((spec, wasm, format!("module {}", path.display())))
}

/// A module of the bundle at `path`, granted the bundle's models it names,
/// with the manifest's limits and config values (`--config` adds to them).
fn from_bundle(args: &RunArgs, path: &Path) -> Result<(ModuleSpec, Vec<u8>, String), Failure> {
    let bundle = Bundle::open(path).with_context(|| format!("cannot open the bundle {}", path.display()))?;
    if !args.trust.is_empty() {
        let trusted = args.trust.iter().map(|p| keys::read_verifying_key(p)).collect::<Result<Vec<_>, _>>()?;
        bundle.require_signer(&trusted).with_context(|| format!("refusing the bundle {}", path.display()))?;
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
    let mut held = Vec::new();
    for model in &manifest.models {
        if !module.models.iter().any(|g| g.covers(model.name.as_str(), model.version.as_str())) {
            continue;
        }
        let options = LoadOptions { pinned_dims: model.pin.clone() };
        let loaded = Model::from_bytes(model.name.as_str(), bundle.file(&model.file), &options)?;
        held.push(Arc::new(HeldModel {
            name: model.name.to_string(),
            version: model.version.to_string(),
            model: Arc::new(loaded),
        }));
    }
    let mut config = module.config.clone();
    config.extend(args.config.iter().cloned());
    let spec = ModuleSpec {
        id: module.id.to_string(),
        tenant: LOCAL_TENANT.to_owned(),
        grants: module_grants(&held),
        limits: module.limits.limits(),
        config,
    };
    let source = format!("module `{}` of bundle {}", module.id, path.display());
    Ok((spec, bundle.file(&module.file).to_vec(), source))
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

fn module_name(path: &std::path::Path) -> String {
    path.file_stem().map_or_else(|| "module".to_owned(), |s| s.to_string_lossy().into_owned())
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

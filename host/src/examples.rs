//! The example guests bundled into the binary, and the models they use, so
//! that a node can run the examples with no configuration at all.

use mantle_manifest::module::{ModuleDeclaration, ModuleSource};
use mantle_manifest::node::{ModelConfig, NodeConfig, NodeSettings, RawNodeConfig, RawTenantConfig, TenantLimits};
use mantle_models::LoadOptions;
use mantle_node::{BuildOptions, BuiltinGuest, Node, NodeError};
use mantle_types::{Grant, Id, Name};
use std::collections::BTreeMap;
use std::path::Path;

mod wasm {
    include!(concat!(env!("OUT_DIR"), "/example_guests.rs"));
}

/// A bundled example: a guest and the one model it is granted.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    /// The module name, which is also the guest crate's name.
    pub name: &'static str,
    /// What the guest does, in a line.
    pub summary: &'static str,
    pub wasm: &'static [u8],
    /// The model the guest loads by name.
    pub model: &'static str,
    /// Named dimensions of the model fixed at load: each guest sends one
    /// item per run, and tract runs a fixed shape several times faster.
    pub pinned_dims: &'static [(&'static str, usize)],
}

/// The three example pipelines.
pub const EXAMPLES: [Example; 3] = [
    Example {
        name: "image-classify",
        summary: "PNG or JPEG photo -> top-5 ImageNet classes (EfficientNet-Lite0)",
        wasm: wasm::IMAGE_CLASSIFY,
        model: "efficientnet-lite0",
        pinned_dims: &[("N", 1)],
    },
    Example {
        name: "text-embed",
        summary: "UTF-8 text -> 384-dimensional sentence embedding (all-MiniLM-L6-v2)",
        wasm: wasm::TEXT_EMBED,
        model: "minilm-l6",
        pinned_dims: &[("batch", 1)],
    },
    Example {
        name: "speech-detect",
        summary: "WAV recording -> speech segments (Silero VAD)",
        wasm: wasm::SPEECH_DETECT,
        model: "silero-vad",
        pinned_dims: &[],
    },
];

/// The tenant the bundled examples run as.
pub const DEMO_TENANT: &str = "demo";

impl Example {
    /// Where the example's model lives below a models directory laid out
    /// as this repository's `models/`.
    pub fn model_path(&self, models_dir: &Path) -> std::path::PathBuf {
        models_dir.join(self.model).join("model.onnx")
    }

    /// How the example's model is prepared at load.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            pinned_dims: self.pinned_dims.iter().map(|&(dim, size)| (dim.to_owned(), size)).collect(),
            batching: None,
        }
    }
}

/// The example guests, as a node resolves `example = "..."`.
pub fn builtin_guests() -> [BuiltinGuest; 3] {
    EXAMPLES.map(|example| BuiltinGuest::new(example.name, example.wasm))
}

/// The configuration of the bundled examples: each example model from
/// `models_dir`, and tenant `demo` running every example guest. The tenant
/// takes requests that carry no key.
pub fn examples_config(models_dir: &Path) -> NodeConfig {
    examples_config_with(models_dir, NodeSettings::default())
}

/// [`examples_config`] with the node's `settings`.
pub fn examples_config_with(models_dir: &Path, settings: NodeSettings) -> NodeConfig {
    // The examples' names are constants that are valid ids and names.
    let name = |text: &str| Name::new(text).expect("an example's model name is valid");
    let grant = |model: &str| Grant::every_version(name(model));
    let models = EXAMPLES
        .iter()
        .map(|example| ModelConfig {
            name: name(example.model),
            version: Name::first_version(),
            path: example.model_path(models_dir),
            pin: example.load_options().pinned_dims,
            max_batch: 1,
            max_queue_delay_us: 0,
        })
        .collect();
    let modules = EXAMPLES
        .iter()
        .map(|example| ModuleDeclaration {
            id: Id::new(example.name).expect("an example's name is a valid id"),
            source: ModuleSource::Builtin(example.name.to_owned()),
            models: vec![grant(example.model)],
            limits: Default::default(),
            config: BTreeMap::new(),
        })
        .collect();
    let raw = RawNodeConfig {
        node: settings,
        models,
        tenants: vec![RawTenantConfig {
            id: Id::new(DEMO_TENANT).expect("the demo tenant's name is a valid id"),
            key_sha256: Vec::new(),
            open: true,
            grants: EXAMPLES.iter().map(|e| grant(e.model)).collect(),
            limits: TenantLimits::default(),
            modules,
            follows: Vec::new(),
        }],
    };
    // Checked as any configuration is; nothing in it comes from outside.
    NodeConfig::try_from(raw).unwrap_or_else(|e| panic!("the examples' configuration is invalid: {e}"))
}

/// A node serving the bundled examples, keeping nothing on disk, its
/// guests compiled in this process: what `mantle demo`, the tests and the
/// benchmarks run the examples on, built as `mantle serve` builds its node.
pub fn examples_node(models_dir: &Path) -> Result<Node, NodeError> {
    examples_node_with(models_dir, |_| {})
}

/// [`examples_node`], with its settings changed by `settle` first.
pub fn examples_node_with(models_dir: &Path, settle: impl FnOnce(&mut NodeSettings)) -> Result<Node, NodeError> {
    let builtin_guests = builtin_guests();
    let options = BuildOptions { data_dir: None, compile_with: None, builtin_guests: &builtin_guests };
    let mut settings = NodeSettings::default();
    settle(&mut settings);
    Node::build(&examples_config_with(models_dir, settings), &options)
}

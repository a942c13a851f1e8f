//! `mantle.toml`, the manifest a tenant writes for a bundle: its name and
//! version, the models it ships (each pinned by its SHA-256), and the guest
//! modules with the models each may load, their limits and config values.

use crate::module::{ModuleDeclaration, ModuleLimitsConfig, ModuleSource};
use mantle_types::{Grant, Id, Name, Sha256};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// Most `[[module]]` tables a bundle may have.
pub const MAX_MODULES: usize = 32;
/// Most `[[model]]` tables a bundle may have.
pub const MAX_MODELS: usize = 32;

/// The manifest format this mantle reads. A manifest that names none is
/// version 1, the format before the field existed.
pub const MANIFEST_VERSION: u32 = 1;

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// The format the manifest is written in, so that a newer format is
    /// refused by name rather than field by field.
    #[serde(default = "first_manifest_version", deserialize_with = "manifest_version")]
    pub manifest_version: u32,
    pub bundle: BundleInfo,
    /// `[[model]]` tables.
    #[serde(default, rename = "model")]
    pub models: Vec<BundleModel>,
    /// `[[module]]` tables, each read as a declaration whose component is
    /// a file of the bundle.
    #[serde(rename = "module", deserialize_with = "bundle_modules")]
    pub modules: Vec<ModuleDeclaration>,
}

fn first_manifest_version() -> u32 {
    1
}

fn manifest_version<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let version = u32::deserialize(deserializer)?;
    if version == 0 || version > MANIFEST_VERSION {
        return Err(serde::de::Error::custom(format!(
            "manifest_version {version} is not one this mantle reads: it reads 1 to {MANIFEST_VERSION}; \
             a newer mantle may read this bundle"
        )));
    }
    Ok(version)
}

/// What the bundle is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleInfo {
    /// The deployment this bundle is a version of.
    pub name: Id,
    pub version: Name,
    /// Which versions of the bundle's models KServe serves to the tenant:
    /// `"latest"` (the highest version of each model), `"all"`, or a list
    /// of versions. By default none: the models serve only the guests.
    #[serde(default)]
    pub kserve_versions: ModelPolicy,
}

/// Which model versions a deployment serves through KServe.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "PolicyText")]
pub enum ModelPolicy {
    #[default]
    None,
    Latest,
    All,
    Versions(Vec<Name>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PolicyText {
    Word(String),
    Versions(Vec<Name>),
}

impl TryFrom<PolicyText> for ModelPolicy {
    type Error = String;

    fn try_from(text: PolicyText) -> Result<Self, String> {
        match text {
            PolicyText::Word(word) => match word.as_str() {
                "none" => Ok(ModelPolicy::None),
                "latest" => Ok(ModelPolicy::Latest),
                "all" => Ok(ModelPolicy::All),
                other => Err(format!(
                    "`{other}` is not a version policy: use \"latest\", \"all\", \"none\" or a list of versions"
                )),
            },
            PolicyText::Versions(versions) => Ok(ModelPolicy::Versions(versions)),
        }
    }
}

/// A model the bundle ships.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleModel {
    pub name: Name,
    #[serde(default = "Name::first_version")]
    pub version: Name,
    /// The `.onnx` file, relative to the bundle.
    pub file: BundlePath,
    /// The SHA-256 the file must have.
    pub sha256: Sha256,
    /// Named input dimensions fixed before optimizing, e.g. `{ N = 1 }`.
    #[serde(default)]
    pub pin: BTreeMap<String, usize>,
}

/// A `[[module]]` table: a guest module the bundle ships.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleModule {
    id: Id,
    /// The component, relative to the bundle.
    file: BundlePath,
    /// Models of this bundle the guest may load, by `name` or
    /// `name@version`.
    #[serde(default)]
    models: Vec<Grant>,
    #[serde(default)]
    limits: ModuleLimitsConfig,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

fn bundle_modules<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<ModuleDeclaration>, D::Error> {
    let modules = Vec::<BundleModule>::deserialize(deserializer)?;
    let declared = modules.into_iter().map(|m| ModuleDeclaration {
        id: m.id,
        source: ModuleSource::Bundled(m.file),
        models: m.models,
        limits: m.limits,
        config: m.config,
    });
    Ok(declared.collect())
}

/// A path inside a bundle: relative, `/`-separated, with no `.`, `..` or
/// empty parts, so that it cannot name anything outside the bundle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct BundlePath(String);

impl TryFrom<String> for BundlePath {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let safe = !text.is_empty()
            && text.len() <= 255
            && text.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
            && !text.contains(['\\', '\0']);
        if safe {
            Ok(BundlePath(text))
        } else {
            Err(format!("`{text}` is not a path inside the bundle: use a relative path with `/` and no `..`"))
        }
    }
}

impl BundlePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BundlePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl BundleManifest {
    /// Parses and checks `mantle.toml`.
    pub fn parse(text: &str) -> Result<BundleManifest, String> {
        let manifest: BundleManifest = toml::from_str(text).map_err(|e| e.to_string())?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Every file the manifest names, once each.
    pub fn files(&self) -> impl Iterator<Item = &BundlePath> {
        let mut seen = HashSet::new();
        let modules = self.modules.iter().filter_map(|m| match &m.source {
            ModuleSource::Bundled(file) => Some(file),
            ModuleSource::File(_) | ModuleSource::Builtin(_) => None,
        });
        self.models.iter().map(|m| &m.file).chain(modules).filter(move |p| seen.insert(*p))
    }

    fn check(&self) -> Result<(), String> {
        let mut models = HashSet::new();
        for model in &self.models {
            if !models.insert((model.name.as_str(), model.version.as_str())) {
                return Err(format!("model `{}` version `{}` is listed twice", model.name, model.version));
            }
        }
        let mut modules = HashSet::new();
        for module in &self.modules {
            if !modules.insert(module.id.as_str()) {
                return Err(format!("module `{}` is listed twice", module.id));
            }
            for grant in &module.models {
                if !self.models.iter().any(|m| grant.covers(m.name.as_str(), m.version.as_str())) {
                    return Err(format!("module `{}`: model `{grant}` is not in the bundle", module.id));
                }
            }
        }
        if let ModelPolicy::Versions(versions) = &self.bundle.kserve_versions
            && let Some(missing) = versions.iter().find(|v| !self.models.iter().any(|m| m.version == **v))
        {
            return Err(format!("kserve_versions names version `{missing}`, which no model of the bundle has"));
        }
        if self.modules.is_empty() {
            return Err("the bundle has no [[module]]".to_owned());
        }
        // Each module and model costs a deploy seconds of compiling or
        // loading, one deploy at a time: a bundle may not hold deploys up
        // for hours.
        if self.modules.len() > MAX_MODULES {
            return Err(format!(
                "the bundle has {} modules; a bundle may have at most {MAX_MODULES}",
                self.modules.len()
            ));
        }
        if self.models.len() > MAX_MODELS {
            return Err(format!("the bundle has {} models; a bundle may have at most {MAX_MODELS}", self.models.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn manifest(models: &str, modules: &str) -> String {
        format!("[bundle]\nname = \"vision\"\nversion = \"2\"\n\n{models}\n{modules}")
    }

    #[test]
    fn mistakes_are_reported_at_the_field() {
        let model = format!("[[model]]\nname = \"m\"\nfile = \"m.onnx\"\nsha256 = \"{SHA}\"\n");
        let module = "[[module]]\nid = \"classify\"\nfile = \"c.wasm\"\nmodels = [\"m\"]\n";
        BundleManifest::parse(&manifest(&model, module)).expect("a valid manifest");

        let unknown = BundleManifest::parse(&manifest(&model, &format!("{module}route = \"/x\"\n"))).unwrap_err();
        assert!(unknown.contains("line 14") && unknown.contains("unknown field `route`"), "{unknown}");
        let escape = BundleManifest::parse(&manifest(&model.replace("m.onnx", "../m.onnx"), module)).unwrap_err();
        assert!(escape.contains("line 7") && escape.contains("not a path inside the bundle"), "{escape}");
        let digest = BundleManifest::parse(&manifest(&model.replace(SHA, "abc"), module)).unwrap_err();
        assert!(digest.contains("line 8") && digest.contains("`abc` is not a SHA-256"), "{digest}");
        let missing = BundleManifest::parse(&manifest(&model, &module.replace("[\"m\"]", "[\"n\"]"))).unwrap_err();
        assert!(missing.contains("module `classify`: model `n` is not in the bundle"), "{missing}");
        let many: String = (0..=MAX_MODULES).map(|i| module.replace("classify", &format!("classify-{i}"))).collect();
        let too_many = BundleManifest::parse(&manifest(&model, &many)).unwrap_err();
        assert!(too_many.contains(&format!("at most {MAX_MODULES}")), "{too_many}");
    }

    #[test]
    fn a_manifest_names_its_format_or_is_the_first() {
        let model = format!("[[model]]\nname = \"m\"\nfile = \"m.onnx\"\nsha256 = \"{SHA}\"\n");
        let module = "[[module]]\nid = \"classify\"\nfile = \"c.wasm\"\n";
        let unnamed = BundleManifest::parse(&manifest(&model, module)).expect("no manifest_version");
        assert_eq!(unnamed.manifest_version, 1);
        let named = BundleManifest::parse(&format!("manifest_version = 1\n{}", manifest(&model, module)));
        assert_eq!(named.expect("version 1").manifest_version, 1);
        let newer = BundleManifest::parse(&format!("manifest_version = 2\n{}", manifest(&model, module)))
            .expect_err("a format from the future");
        assert!(
            newer.contains("line 1") && newer.contains("manifest_version 2 is not one this mantle reads"),
            "{newer}"
        );
    }

    #[test]
    fn a_version_policy_is_a_word_or_versions_the_bundle_has() {
        let model = format!("[[model]]\nname = \"m\"\nversion = \"2\"\nfile = \"m.onnx\"\nsha256 = \"{SHA}\"\n");
        let module = "[[module]]\nid = \"classify\"\nfile = \"c.wasm\"\n";
        let with = |policy: &str| {
            let text = manifest(&model, module)
                .replace("version = \"2\"\n\n", &format!("version = \"2\"\nkserve_versions = {policy}\n\n"));
            BundleManifest::parse(&text)
        };
        assert_eq!(with("\"latest\"").expect("latest").bundle.kserve_versions, ModelPolicy::Latest);
        assert_eq!(
            with("[\"2\"]").expect("a list").bundle.kserve_versions,
            ModelPolicy::Versions(vec![Name::new("2").expect("a name")])
        );
        let word = with("\"newest\"").unwrap_err();
        assert!(word.contains("`newest` is not a version policy"), "{word}");
        let missing = with("[\"3\"]").unwrap_err();
        assert!(missing.contains("kserve_versions names version `3`"), "{missing}");
    }
}

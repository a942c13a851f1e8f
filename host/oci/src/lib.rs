//! A bundle as an OCI artifact (`docs/OCI.md`): an image manifest of
//! artifact type [`ARTIFACT_TYPE`], whose config blob carries the bundle's
//! index and signature exactly as packed, and one layer per file, titled
//! with its bundle path and addressed by the same SHA-256 the index lists
//! and the node's store keys blobs by. A bundle read back is opened with
//! every check a packed file gets. [`registry`] pushes and pulls them.

pub mod credentials;
pub mod registry;

use mantle_bundle::{Bundle, BundleError, MANIFEST, Packed};
use mantle_manifest::module::ModuleSource;
use mantle_types::Sha256;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The artifact type of a mantle bundle.
pub const ARTIFACT_TYPE: &str = "application/vnd.mantle.bundle.v1";
/// The media type of the config blob: the bundle's index and signature.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.mantle.bundle.config.v1+json";
/// The OCI image manifest's own media type.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// A guest component, as the CNCF wasm artifact conventions name it.
pub const WASM_MEDIA_TYPE: &str = "application/wasm";
/// An ONNX model.
pub const ONNX_MEDIA_TYPE: &str = "application/vnd.mantle.onnx";
/// The bundle's `mantle.toml`.
pub const BUNDLE_MANIFEST_MEDIA_TYPE: &str = "application/vnd.mantle.bundle.manifest.v1+toml";
/// Any other file the manifest names.
pub const FILE_MEDIA_TYPE: &str = "application/octet-stream";
/// The annotation that names a layer's file: its path in the bundle.
pub const TITLE: &str = "org.opencontainers.image.title";

/// Why an artifact is not a bundle, or a bundle not an artifact.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("the image manifest is not valid JSON of the expected form: {0}")]
    Manifest(String),
    #[error("the image manifest has {field} `{found}`, not `{expected}`: it is not a mantle bundle")]
    NotABundle { field: &'static str, found: String, expected: &'static str },
    #[error("`{0}` is not an OCI digest: a mantle bundle's blobs are `sha256:` and 64 hex digits")]
    Digest(String),
    #[error("{0}")]
    Reference(String),
    #[error("the registry: {}", mantle_types::untrusted::escaped(.0))]
    Registry(String),
    #[error("the config blob is invalid: {0}")]
    Config(String),
    #[error("blob {digest} ({what}) has {actual} bytes, or other bytes, than its descriptor says")]
    BlobMismatch { digest: String, what: String, actual: usize },
    #[error("layer {0} has no `{TITLE}` annotation naming its file")]
    Untitled(String),
    #[error("the layers do not match the bundle's index: {0}")]
    Layers(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("registry credentials in {0}")]
    Credentials(String),
}

/// A content descriptor: what a manifest says of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest, as far as a bundle uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    pub media_type: String,
    #[serde(default)]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The config blob: the packed bundle's index and signature, as the exact
/// text that was signed.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    index: String,
    signature: Option<String>,
}

/// A bundle ready to push: the manifest and every blob it names, once
/// each, by digest.
#[derive(Debug)]
pub struct Artifact {
    pub manifest: ImageManifest,
    /// The manifest as it is pushed; its SHA-256 is the artifact's digest.
    pub manifest_bytes: Vec<u8>,
    /// The config blob and every layer's bytes. Files with the same bytes
    /// are one blob.
    pub blobs: BTreeMap<Sha256, Vec<u8>>,
}

/// The `sha256:...` form of a digest.
pub fn oci_digest(digest: &Sha256) -> String {
    format!("sha256:{digest}")
}

/// The SHA-256 an OCI digest names; other algorithms are refused.
pub fn parse_digest(text: &str) -> Result<Sha256, OciError> {
    let hex = text.strip_prefix("sha256:").ok_or_else(|| OciError::Digest(text.to_owned()))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(OciError::Digest(text.to_owned()));
    }
    hex.parse().map_err(|_| OciError::Digest(text.to_owned()))
}

impl Artifact {
    /// The artifact of a packed bundle. It is opened first, so only a bundle
    /// that passes every check is ever pushed.
    pub fn from_packed(packed: Packed) -> Result<Artifact, OciError> {
        let listed = packed.listed()?;
        let config = Config {
            index: text(&packed.index, "the index")?,
            signature: packed.signature.as_deref().map(|s| text(s, "the signature")).transpose()?,
        };
        // Opening moves the files into the bundle: they are not copied to
        // be checked.
        let bundle = packed.open()?;
        let media_types = media_types(&bundle);
        let files: HashMap<&str, &[u8]> = bundle.files().collect();
        let config = serde_json::to_vec(&config).map_err(|e| OciError::Config(e.to_string()))?;
        let config_digest = Sha256::of(&config);
        let mut blobs = BTreeMap::from([(config_digest, config.clone())]);
        let mut layers = Vec::new();
        for listed in listed {
            let bytes = files.get(listed.path.as_str()).ok_or_else(|| BundleError::Missing(listed.path.clone()))?;
            let media_type = media_types.get(listed.path.as_str()).copied().unwrap_or(FILE_MEDIA_TYPE);
            layers.push(Descriptor {
                media_type: media_type.to_owned(),
                digest: oci_digest(&listed.sha256),
                size: listed.size,
                annotations: BTreeMap::from([(TITLE.to_owned(), listed.path.clone())]),
            });
            blobs.entry(listed.sha256).or_insert_with(|| bytes.to_vec());
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.to_owned(),
            artifact_type: Some(ARTIFACT_TYPE.to_owned()),
            config: Descriptor {
                media_type: CONFIG_MEDIA_TYPE.to_owned(),
                digest: oci_digest(&config_digest),
                size: config.len() as u64,
                annotations: BTreeMap::new(),
            },
            layers,
        };
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| OciError::Manifest(e.to_string()))?;
        Ok(Artifact { manifest, manifest_bytes, blobs })
    }

    /// The artifact's digest: that of its manifest.
    pub fn digest(&self) -> Sha256 {
        Sha256::of(&self.manifest_bytes)
    }
}

/// Reads an image manifest a registry served, refusing anything that is
/// not a mantle bundle's.
pub fn parse_manifest(bytes: &[u8]) -> Result<ImageManifest, OciError> {
    let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(|e| OciError::Manifest(e.to_string()))?;
    let expect = |field: &'static str, found: &str, expected: &'static str| {
        if found == expected { Ok(()) } else { Err(OciError::NotABundle { field, found: found.to_owned(), expected }) }
    };
    expect("mediaType", &manifest.media_type, MANIFEST_MEDIA_TYPE)?;
    expect("artifactType", manifest.artifact_type.as_deref().unwrap_or(""), ARTIFACT_TYPE)?;
    expect("config mediaType", &manifest.config.media_type, CONFIG_MEDIA_TYPE)?;
    if manifest.schema_version != 2 {
        return Err(OciError::Manifest(format!("schemaVersion is {}, not 2", manifest.schema_version)));
    }
    parse_digest(&manifest.config.digest)?;
    for layer in &manifest.layers {
        parse_digest(&layer.digest)?;
    }
    Ok(manifest)
}

/// The packed bundle an artifact holds. `blob` gives the bytes of a blob
/// by digest, from a registry or a store; each is checked against its
/// descriptor before it is used, and the layers must be exactly the files
/// the index lists. The result is written back byte for byte by
/// [`Packed::write`], and is still to be opened (signature, manifest).
pub fn packed_from<E>(
    manifest: &ImageManifest,
    mut blob: impl FnMut(&Descriptor) -> Result<Vec<u8>, E>,
) -> Result<Packed, E>
where
    E: From<OciError>,
{
    let config_bytes = checked_blob(&manifest.config, "the config", &mut blob)?;
    let config: Config = serde_json::from_slice(&config_bytes).map_err(|e| OciError::Config(e.to_string()))?;
    let mut packed = Packed {
        index: config.index.into_bytes(),
        signature: config.signature.map(String::into_bytes),
        files: BTreeMap::new(),
    };
    let listed = packed.listed().map_err(OciError::from)?;
    if listed.len() != manifest.layers.len() {
        let message = format!("{} layers for {} files", manifest.layers.len(), listed.len());
        return Err(OciError::Layers(message).into());
    }
    for (layer, listed) in manifest.layers.iter().zip(&listed) {
        let title = layer.annotations.get(TITLE).ok_or_else(|| OciError::Untitled(layer.digest.clone()))?;
        if *title != listed.path || layer.digest != oci_digest(&listed.sha256) || layer.size != listed.size {
            let message = format!("layer `{title}` ({}) is not the index's `{}`", layer.digest, listed.path);
            return Err(OciError::Layers(message).into());
        }
        let bytes = checked_blob(layer, title, &mut blob)?;
        packed.files.insert(listed.path.clone(), bytes);
    }
    Ok(packed)
}

/// A blob's bytes, refused unless they have the descriptor's size and
/// digest.
fn checked_blob<E: From<OciError>>(
    descriptor: &Descriptor,
    what: &str,
    blob: &mut impl FnMut(&Descriptor) -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, E> {
    let expected = parse_digest(&descriptor.digest)?;
    let bytes = blob(descriptor)?;
    if bytes.len() as u64 != descriptor.size || Sha256::of(&bytes) != expected {
        let mismatch =
            OciError::BlobMismatch { digest: descriptor.digest.clone(), what: what.to_owned(), actual: bytes.len() };
        return Err(mismatch.into());
    }
    Ok(bytes)
}

/// The media type of each file the bundle's manifest names.
fn media_types(bundle: &Bundle) -> HashMap<&str, &'static str> {
    let manifest = &bundle.manifest;
    let mut types = HashMap::from([(MANIFEST, BUNDLE_MANIFEST_MEDIA_TYPE)]);
    for model in &manifest.models {
        types.insert(model.file.as_str(), ONNX_MEDIA_TYPE);
    }
    for module in &manifest.modules {
        if let ModuleSource::Bundled(file) = &module.source {
            types.insert(file.as_str(), WASM_MEDIA_TYPE);
        }
    }
    types
}

fn text(bytes: &[u8], what: &str) -> Result<String, OciError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| OciError::Config(format!("{what} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    const MODEL: &[u8] = b"the bytes of a model";
    const COMPONENT: &[u8] = b"\0asm the component";

    /// A signed packed bundle with a model, a module, and a second file
    /// with the model's bytes.
    fn packed() -> Packed {
        let manifest = format!(
            "[bundle]\nname = \"vision\"\nversion = \"2\"\n\n\
             [[model]]\nname = \"m\"\nfile = \"models/m.onnx\"\nsha256 = \"{sha}\"\n\n\
             [[model]]\nname = \"m\"\nversion = \"2\"\nfile = \"models/copy.onnx\"\nsha256 = \"{sha}\"\n\n\
             [[module]]\nid = \"classify\"\nfile = \"classify.wasm\"\nmodels = [\"m\"]\n",
            sha = Sha256::of(MODEL)
        );
        let files = BTreeMap::from([
            (MANIFEST.to_owned(), manifest.into_bytes()),
            ("models/m.onnx".to_owned(), MODEL.to_vec()),
            ("models/copy.onnx".to_owned(), MODEL.to_vec()),
            ("classify.wasm".to_owned(), COMPONENT.to_vec()),
        ]);
        let bundle = Bundle::from_files(files, None).expect("a valid bundle");
        bundle.packed(Some(&SigningKey::from_bytes(&[7; 32]))).expect("packs")
    }

    fn from_blobs(artifact: &Artifact) -> impl FnMut(&Descriptor) -> Result<Vec<u8>, OciError> + '_ {
        |descriptor| {
            let digest = parse_digest(&descriptor.digest)?;
            Ok(artifact.blobs.get(&digest).cloned().unwrap_or_default())
        }
    }

    #[test]
    fn a_bundle_goes_through_an_artifact_and_comes_back_byte_for_byte() {
        let packed = packed();
        let artifact = Artifact::from_packed(packed.clone()).expect("an artifact");
        let manifest = parse_manifest(&artifact.manifest_bytes).expect("a bundle's manifest");
        assert_eq!(manifest.artifact_type.as_deref(), Some(ARTIFACT_TYPE));

        // One layer per file, titled with its path, addressed by the digest
        // the index lists; files with the same bytes share a blob.
        let layers: Vec<_> = manifest
            .layers
            .iter()
            .map(|l| (l.annotations[TITLE].as_str(), l.media_type.as_str(), l.digest.clone()))
            .collect();
        let model = oci_digest(&Sha256::of(MODEL));
        assert!(layers.contains(&("models/m.onnx", ONNX_MEDIA_TYPE, model.clone())), "{layers:?}");
        assert!(layers.contains(&("models/copy.onnx", ONNX_MEDIA_TYPE, model)), "{layers:?}");
        let component = oci_digest(&Sha256::of(COMPONENT));
        assert!(layers.contains(&("classify.wasm", WASM_MEDIA_TYPE, component)), "{layers:?}");
        assert!(layers.iter().any(|(path, kind, _)| *path == MANIFEST && *kind == BUNDLE_MANIFEST_MEDIA_TYPE));
        assert_eq!(layers.len(), 4);
        assert_eq!(artifact.blobs.len(), 4, "config, manifest file, model once, component");

        let back = packed_from(&manifest, from_blobs(&artifact)).expect("the bundle back");
        assert_eq!(back.write().expect("writes"), packed.write().expect("writes"), "byte for byte");
        let bundle = back.open().expect("opens with its signature");
        assert!(bundle.signer.is_some());
    }

    #[test]
    fn an_artifact_that_is_not_a_sound_bundle_is_refused_by_name() {
        let artifact = Artifact::from_packed(packed()).expect("an artifact");
        let manifest = parse_manifest(&artifact.manifest_bytes).expect("a bundle's manifest");

        // A blob served with other bytes.
        let tampered = packed_from(&manifest, |d: &Descriptor| -> Result<Vec<u8>, OciError> {
            let mut bytes = from_blobs(&artifact)(d)?;
            if d.annotations.get(TITLE).is_some_and(|t| t == "classify.wasm") {
                bytes[0] ^= 1;
            }
            Ok(bytes)
        });
        assert!(matches!(tampered, Err(OciError::BlobMismatch { ref what, .. }) if what == "classify.wasm"));

        // A layer renamed, and a layer left out.
        let mut renamed = manifest.clone();
        renamed.layers[0].annotations.insert(TITLE.to_owned(), "other.wasm".to_owned());
        assert!(matches!(packed_from(&renamed, from_blobs(&artifact)), Err(OciError::Layers(_))));
        let mut short = manifest.clone();
        short.layers.pop();
        assert!(matches!(packed_from(&short, from_blobs(&artifact)), Err(OciError::Layers(_))));

        // Another artifact type, another digest algorithm, not JSON.
        let mut other: serde_json::Value = serde_json::from_slice(&artifact.manifest_bytes).expect("JSON");
        other["artifactType"] = "application/vnd.example.other".into();
        let refused = parse_manifest(&serde_json::to_vec(&other).expect("JSON")).expect_err("not a bundle");
        assert!(refused.to_string().contains("not a mantle bundle"), "{refused}");
        other["artifactType"] = ARTIFACT_TYPE.into();
        other["layers"][0]["digest"] = "sha512:00".into();
        assert!(matches!(parse_manifest(&serde_json::to_vec(&other).expect("JSON")), Err(OciError::Digest(_))));
        assert!(matches!(parse_manifest(b"<html>"), Err(OciError::Manifest(_))));
    }
}

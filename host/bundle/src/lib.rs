//! A bundle: what a tenant ships, a manifest (`mantle.toml`) and the files
//! it names, as a directory or packed into one file. A packed bundle carries
//! an index with the SHA-256 of every file, and optionally an ed25519
//! signature over that index; opening one checks all of it before any of it
//! is used. Reading and writing bundles only: nothing is loaded here.

pub mod keys;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use mantle_manifest::bundle::{BundleManifest, BundlePath};
use mantle_types::Sha256;
use mantle_types::untrusted::{escaped, escaped_keeping_lines};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The manifest's name, in a bundle directory and in a packed bundle.
pub const MANIFEST: &str = "mantle.toml";
/// The index of a packed bundle: every file with its size and SHA-256.
const INDEX: &str = "bundle.json";
/// The signature of a packed bundle's index.
const SIGNATURE: &str = "bundle.sig";
const FORMAT: &str = "mantle-bundle/1";

/// Why a bundle was refused. Each names the problem and, where there is
/// one, the file.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the bundle is not a readable archive: {}", escaped(.0))]
    Archive(String),
    #[error("the bundle's index ({INDEX}) is invalid: {}", escaped(.0))]
    Index(String),
    #[error("invalid {MANIFEST}:\n{}", escaped_keeping_lines(.0))]
    Manifest(String),
    #[error("the bundle has no file `{}`", escaped(.0))]
    Missing(String),
    #[error("the bundle holds `{}`, which its index does not list", escaped(.0))]
    Unlisted(String),
    #[error("`{}` does not match the SHA-256 the bundle's index gives for it: the bundle is corrupt", escaped(.0))]
    Corrupt(String),
    #[error("model `{model}`: `{}` has SHA-256 {actual}, but {MANIFEST} says {expected}", escaped(.file))]
    ModelDigest { model: String, file: String, expected: Sha256, actual: Sha256 },
    #[error("the bundle's signature ({SIGNATURE}) is invalid: {}", escaped(.0))]
    Signature(String),
    #[error("the bundle is not signed, but a signature by a trusted key is required")]
    Unsigned,
    #[error("the bundle is signed by {0}, which is not a trusted key")]
    UntrustedSigner(String),
}

/// A bundle whose files all match their digests.
#[derive(Debug)]
pub struct Bundle {
    pub manifest: BundleManifest,
    /// `mantle.toml` and every file it names, by path.
    files: BTreeMap<String, Vec<u8>>,
    /// The key that signed the index, for a packed and signed bundle.
    pub signer: Option<VerifyingKey>,
}

/// `bundle.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    format: String,
    files: Vec<IndexEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexEntry {
    path: String,
    size: u64,
    sha256: String,
}

/// `bundle.sig`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    /// The signer's public key, in hex.
    signer: String,
    /// The ed25519 signature of the exact bytes of `bundle.json`, in hex.
    signature: String,
}

impl Bundle {
    /// Opens a bundle directory or a packed bundle file.
    pub fn open(path: &Path) -> Result<Bundle, BundleError> {
        if path.is_dir() {
            Self::read_dir(path)
        } else {
            let bytes = std::fs::read(path).map_err(|source| BundleError::Read { path: path.to_owned(), source })?;
            Self::unpack(&bytes)
        }
    }

    /// Reads `mantle.toml` in `dir` and the files it names.
    pub fn read_dir(dir: &Path) -> Result<Bundle, BundleError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| BundleError::Read { path, source })
        };
        let text = read(MANIFEST)?;
        let manifest = parse_manifest(&text)?;
        let mut files = BTreeMap::from([(MANIFEST.to_owned(), text)]);
        for path in manifest.files() {
            files.insert(path.as_str().to_owned(), read(path.as_str())?);
        }
        Self::checked(manifest, files, None)
    }

    /// Reads a packed bundle, checking the index, the signature if there is
    /// one, and every file's size and digest.
    pub fn unpack(archive: &[u8]) -> Result<Bundle, BundleError> {
        Packed::read(archive)?.open()
    }

    /// Checks that every file the manifest names is present and that every
    /// model has the digest the manifest pins.
    fn checked(
        manifest: BundleManifest,
        files: BTreeMap<String, Vec<u8>>,
        signer: Option<VerifyingKey>,
    ) -> Result<Bundle, BundleError> {
        if let Some(path) = manifest.files().find(|p| !files.contains_key(p.as_str())) {
            return Err(BundleError::Missing(path.to_string()));
        }
        for model in &manifest.models {
            let bytes = files.get(model.file.as_str()).ok_or_else(|| BundleError::Missing(model.file.to_string()))?;
            let actual = Sha256::of(bytes);
            if actual != model.sha256 {
                return Err(BundleError::ModelDigest {
                    model: model.name.to_string(),
                    file: model.file.to_string(),
                    expected: model.sha256,
                    actual,
                });
            }
        }
        Ok(Bundle { manifest, files, signer })
    }

    /// A bundle from its files as a store kept them: `mantle.toml` and the
    /// files it names, checked as when they were first opened.
    pub fn from_files(files: BTreeMap<String, Vec<u8>>, signer: Option<VerifyingKey>) -> Result<Bundle, BundleError> {
        let text = files.get(MANIFEST).ok_or_else(|| BundleError::Missing(MANIFEST.to_owned()))?;
        let manifest = parse_manifest(text)?;
        Self::checked(manifest, files, signer)
    }

    /// Every file of the bundle, `mantle.toml` included, by path.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(path, bytes)| (path.as_str(), bytes.as_slice()))
    }

    /// The bytes of a file the manifest names.
    pub fn file(&self, path: &BundlePath) -> &[u8] {
        // `checked` made sure every named file is here.
        self.files.get(path.as_str()).map_or(&[], Vec::as_slice)
    }

    /// The bundle as one file: the index, the signature when `signing_key`
    /// is given, then the files. The same bundle and key give the same bytes.
    pub fn pack(&self, signing_key: Option<&SigningKey>) -> Result<Vec<u8>, BundleError> {
        self.packed(signing_key)?.write()
    }

    /// The entries of the bundle's packed file, before they are written.
    pub fn packed(&self, signing_key: Option<&SigningKey>) -> Result<Packed, BundleError> {
        let index = Index {
            format: FORMAT.to_owned(),
            files: self
                .files
                .iter()
                .map(|(path, bytes)| IndexEntry {
                    path: path.clone(),
                    size: bytes.len() as u64,
                    sha256: Sha256::of(bytes).to_string(),
                })
                .collect(),
        };
        let index = serde_json::to_vec_pretty(&index).map_err(|e| BundleError::Index(e.to_string()))?;
        let signature = match signing_key {
            Some(key) => {
                let signature = SignatureFile {
                    signer: hex::encode(key.verifying_key().as_bytes()),
                    signature: hex::encode(key.sign(&index).to_bytes()),
                };
                Some(serde_json::to_vec_pretty(&signature).map_err(|e| BundleError::Index(e.to_string()))?)
            }
            None => None,
        };
        Ok(Packed { index, signature, files: self.files.clone() })
    }

    /// Refuses the bundle unless one of `trusted` signed it.
    pub fn require_signer(&self, trusted: &[VerifyingKey]) -> Result<(), BundleError> {
        match &self.signer {
            None => Err(BundleError::Unsigned),
            Some(signer) if trusted.contains(signer) => Ok(()),
            Some(signer) => Err(BundleError::UntrustedSigner(hex::encode(signer.as_bytes()))),
        }
    }
}

/// A packed bundle's entries, unchecked: the exact bytes of its index
/// (`bundle.json`) and signature (`bundle.sig`), and its files by path.
/// Writing them gives the archive [`Bundle::pack`] makes, byte for byte;
/// [`Packed::open`] checks everything before anything is used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    pub index: Vec<u8>,
    pub signature: Option<Vec<u8>>,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// A file a packed bundle's index lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: String,
    pub size: u64,
    pub sha256: Sha256,
}

impl Packed {
    /// Splits a packed bundle into its entries, checking only that it is an
    /// archive of regular files with safe names and an index.
    pub fn read(archive: &[u8]) -> Result<Packed, BundleError> {
        let mut files = read_archive(archive)?;
        let index = files.remove(INDEX).ok_or_else(|| BundleError::Missing(INDEX.to_owned()))?;
        let signature = files.remove(SIGNATURE);
        Ok(Packed { index, signature, files })
    }

    /// The packed file: the index, the signature if any, then the files in
    /// the order of their paths.
    pub fn write(&self) -> Result<Vec<u8>, BundleError> {
        let mut archive = tar::Builder::new(Vec::new());
        let mut append = |path: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            archive.append_data(&mut header, path, bytes).map_err(|e| BundleError::Archive(e.to_string()))
        };
        append(INDEX, &self.index)?;
        if let Some(signature) = &self.signature {
            append(SIGNATURE, signature)?;
        }
        for (path, bytes) in &self.files {
            append(path, bytes)?;
        }
        archive.into_inner().map_err(|e| BundleError::Archive(e.to_string()))
    }

    /// The files the index lists, each with its size and digest, in the
    /// index's order.
    pub fn listed(&self) -> Result<Vec<Listed>, BundleError> {
        let index = self.parsed_index()?;
        index
            .files
            .into_iter()
            .map(|entry| {
                let sha256 =
                    entry.sha256.parse().map_err(|e: String| BundleError::Index(format!("`{}`: {e}", entry.path)))?;
                Ok(Listed { path: entry.path, size: entry.size, sha256 })
            })
            .collect()
    }

    /// Checks the index, the signature if there is one, and every file's
    /// size and digest, then the manifest and what it names.
    pub fn open(self) -> Result<Bundle, BundleError> {
        let index = self.parsed_index()?;
        let signer = match &self.signature {
            Some(signature) => Some(verify_signature(signature, &self.index)?),
            None => None,
        };
        let mut entries = self.files;
        let mut files = BTreeMap::new();
        for entry in index.files {
            let bytes = entries.remove(&entry.path).ok_or_else(|| BundleError::Missing(entry.path.clone()))?;
            if bytes.len() as u64 != entry.size || Sha256::of(&bytes).to_string() != entry.sha256 {
                return Err(BundleError::Corrupt(entry.path));
            }
            files.insert(entry.path, bytes);
        }
        if let Some(extra) = entries.into_keys().next() {
            return Err(BundleError::Unlisted(extra));
        }
        Bundle::from_files(files, signer)
    }

    fn parsed_index(&self) -> Result<Index, BundleError> {
        let index: Index = serde_json::from_slice(&self.index).map_err(|e| BundleError::Index(e.to_string()))?;
        if index.format != FORMAT {
            return Err(BundleError::Index(format!("format `{}` is not `{FORMAT}`", index.format)));
        }
        Ok(index)
    }
}

fn parse_manifest(text: &[u8]) -> Result<BundleManifest, BundleError> {
    let text = std::str::from_utf8(text).map_err(|e| BundleError::Manifest(format!("not UTF-8: {e}")))?;
    BundleManifest::parse(text).map_err(BundleError::Manifest)
}

/// Every regular file of a tar archive by path; anything else in it is an
/// error.
fn read_archive(archive: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let corrupt = |e: std::io::Error| BundleError::Archive(e.to_string());
    let mut entries = BTreeMap::new();
    let mut reader = tar::Archive::new(archive);
    for entry in reader.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry.path().map_err(corrupt)?.to_str().map(str::to_owned);
        let path = path.ok_or_else(|| BundleError::Archive("a file name is not UTF-8".to_owned()))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(BundleError::Archive(format!("`{path}` is not a regular file")));
        }
        BundlePath::try_from(path.clone()).map_err(BundleError::Archive)?;
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(corrupt)?;
        if entries.insert(path.clone(), bytes).is_some() {
            return Err(BundleError::Archive(format!("`{path}` appears twice")));
        }
    }
    Ok(entries)
}

/// The key that signed `index`, if `signature_file` is a valid signature.
fn verify_signature(signature_file: &[u8], index: &[u8]) -> Result<VerifyingKey, BundleError> {
    let invalid = |message: String| BundleError::Signature(message);
    let file: SignatureFile = serde_json::from_slice(signature_file).map_err(|e| invalid(e.to_string()))?;
    let signer = keys::parse_verifying_key(&file.signer).map_err(invalid)?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(&file.signature, &mut signature)
        .map_err(|_| invalid("the signature is not 128 hex digits".to_owned()))?;
    signer
        .verify_strict(index, &Signature::from_bytes(&signature))
        .map_err(|_| invalid(format!("it does not verify with the key it names ({})", file.signer)))?;
    Ok(signer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &[u8] = b"the bytes of a model";

    fn manifest_text(model_sha: Sha256) -> String {
        format!(
            "[bundle]\nname = \"vision\"\nversion = \"2\"\n\n\
             [[model]]\nname = \"m\"\nfile = \"models/m.onnx\"\nsha256 = \"{model_sha}\"\n\n\
             [[module]]\nid = \"classify\"\nfile = \"classify.wasm\"\nmodels = [\"m\"]\n"
        )
    }

    fn files(manifest: &str) -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            (MANIFEST.to_owned(), manifest.as_bytes().to_vec()),
            ("models/m.onnx".to_owned(), MODEL.to_vec()),
            ("classify.wasm".to_owned(), b"\0asm the component".to_vec()),
        ])
    }

    fn bundle() -> Bundle {
        let text = manifest_text(Sha256::of(MODEL));
        let manifest = BundleManifest::parse(&text).expect("a valid manifest");
        Bundle::checked(manifest, files(&text), None).expect("a valid bundle")
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// A tar archive of `entries`, as a tampered bundle would be.
    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            // Written raw: the builder itself refuses names like `../x`.
            header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *bytes).expect("append");
        }
        builder.into_inner().expect("finish")
    }

    /// The entries of a packed bundle, in order.
    fn entries(packed: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut archive = tar::Archive::new(packed);
        let mut out = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("an entry");
            let path = entry.path().expect("a path").to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("read");
            out.push((path, bytes));
        }
        out
    }

    #[test]
    fn packing_keeps_every_byte_and_the_signer_and_is_reproducible() {
        let original = bundle();
        let packed = original.pack(Some(&key(1))).expect("packs");
        assert_eq!(packed, original.pack(Some(&key(1))).expect("packs"), "same bundle, same bytes");
        let unpacked = Bundle::unpack(&packed).expect("unpacks");
        assert_eq!(unpacked.files, original.files);
        assert_eq!(unpacked.signer, Some(key(1).verifying_key()));
        unpacked.require_signer(&[key(2).verifying_key(), key(1).verifying_key()]).expect("a trusted signer");
        assert!(matches!(unpacked.require_signer(&[key(2).verifying_key()]), Err(BundleError::UntrustedSigner(_))));
        let unsigned = Bundle::unpack(&original.pack(None).expect("packs")).expect("unpacks");
        assert!(matches!(unsigned.require_signer(&[key(1).verifying_key()]), Err(BundleError::Unsigned)));
    }

    #[test]
    fn a_packed_file_split_into_its_entries_is_written_back_byte_for_byte() {
        for signing_key in [None, Some(key(1))] {
            let archive = bundle().pack(signing_key.as_ref()).expect("packs");
            let packed = Packed::read(&archive).expect("reads");
            assert_eq!(packed.signature.is_some(), signing_key.is_some());
            let listed = packed.listed().expect("an index");
            let paths: Vec<_> = listed.iter().map(|l| l.path.as_str()).collect();
            assert_eq!(paths, ["classify.wasm", MANIFEST, "models/m.onnx"]);
            assert_eq!(listed[2].sha256, Sha256::of(MODEL));
            assert_eq!(packed.write().expect("writes"), archive);
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        let packed = bundle().pack(Some(&key(1))).expect("packs");
        let model_at = packed.windows(MODEL.len()).position(|w| w == MODEL).expect("the model is in the archive");
        let mut flipped = packed.clone();
        flipped[model_at + 3] ^= 0x01;
        let error = Bundle::unpack(&flipped).expect_err("a corrupt model");
        assert_eq!(
            error.to_string(),
            "`models/m.onnx` does not match the SHA-256 the bundle's index gives for it: the bundle is corrupt"
        );
        // Every other byte of the archive, headers and index included: some
        // bytes (padding, unused header fields) carry nothing, but none may
        // change what the bundle says without being refused.
        let original = Bundle::unpack(&packed).expect("unpacks");
        for at in (0..packed.len()).step_by(7) {
            let mut tampered = packed.clone();
            tampered[at] ^= 0x20;
            if let Ok(bundle) = Bundle::unpack(&tampered) {
                assert_eq!(bundle.files, original.files, "byte {at} changed the bundle unnoticed");
                assert_eq!(bundle.signer, original.signer, "byte {at}");
            }
        }
    }

    #[test]
    fn a_signature_that_does_not_verify_is_refused() {
        let packed = bundle().pack(Some(&key(1))).expect("packs");
        let mut parts = entries(&packed);
        let signature: SignatureFile = serde_json::from_slice(&parts[1].1).expect("the signature file");
        // Another key claims the signature.
        let forged = SignatureFile { signer: hex::encode(key(2).verifying_key().as_bytes()), ..signature };
        parts[1].1 = serde_json::to_vec(&forged).expect("JSON");
        let refs: Vec<(&str, &[u8])> = parts.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect();
        let error = Bundle::unpack(&archive(&refs)).expect_err("a forged signer");
        assert!(error.to_string().contains("does not verify with the key it names"), "{error}");
    }

    #[test]
    fn files_that_do_not_add_up_are_named() {
        let packed = bundle().pack(None).expect("packs");
        let mut parts = entries(&packed);
        parts.push(("extra.bin".to_owned(), b"smuggled".to_vec()));
        let refs: Vec<(&str, &[u8])> = parts.iter().map(|(p, b)| (p.as_str(), b.as_slice())).collect();
        let error = Bundle::unpack(&archive(&refs)).expect_err("an unlisted file");
        assert_eq!(error.to_string(), "the bundle holds `extra.bin`, which its index does not list");

        let escaping = archive(&[("../etc/passwd", b"x")]);
        let error = Bundle::unpack(&escaping).expect_err("a path outside the bundle");
        assert!(error.to_string().contains("not a path inside the bundle"), "{error}");

        // The manifest pins a model digest the file does not have.
        let text = manifest_text(Sha256([7; 32]));
        let manifest = BundleManifest::parse(&text).expect("a valid manifest");
        let error = Bundle::checked(manifest, files(&text), None).expect_err("a model with another digest");
        assert!(error.to_string().starts_with("model `m`: `models/m.onnx` has SHA-256"), "{error}");
    }
}

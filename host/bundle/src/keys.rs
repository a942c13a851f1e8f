//! ed25519 key pairs for signing bundles: made with the system's randomness,
//! kept as hex in two files, `NAME.key` (secret, readable by its owner only)
//! and `NAME.pub`.

use ed25519_dalek::{SigningKey, VerifyingKey};
use mantle_manifest::signer::PublicKey;
use std::path::{Path, PathBuf};

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no randomness for a key: {0}")]
    Random(String),
    #[error("cannot read the key {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the key {}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{} is not a key: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// A new signing key.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` as `STEM.key` and its public half as `STEM.pub`; refuses
/// to overwrite either. Returns both paths.
pub fn write_pair(key: &SigningKey, stem: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
    let secret = stem.with_extension("key");
    let public = stem.with_extension("pub");
    write_new(&public, &format!("{}\n", hex::encode(key.verifying_key().as_bytes())), 0o644)?;
    write_new(&secret, &format!("{}\n", hex::encode(key.to_bytes())), 0o600)?;
    Ok((secret, public))
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let written =
        options.open(path).and_then(|mut file| file.write_all(text.as_bytes()).and_then(|()| file.sync_all()));
    written.map_err(|source| KeyError::Write { path: path.to_owned(), source })
}

/// Reads a signing key written by [`write_pair`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let bytes = read_hex32(path)?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// Reads a public key written by [`write_pair`].
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    parse_verifying_key(&text).map_err(|message| KeyError::Invalid { path: path.to_owned(), message })
}

/// A public key from its hex form.
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey, String> {
    text.parse::<PublicKey>().map(|key| *key.verifying_key())
}

fn read_hex32(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| KeyError::Invalid {
        path: path.to_owned(),
        message: "a secret key is 64 hex digits (`mantle keygen` makes one)".to_owned(),
    })?;
    Ok(bytes)
}

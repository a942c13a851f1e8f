//! The public half of a bundle signer's ed25519 key, as `mantle keygen`
//! writes it: 64 hex digits.

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use std::fmt;

/// A public key whose signatures a node accepts, checked to be a point
/// of the curve when it is read.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct PublicKey(VerifyingKey);

impl std::str::FromStr for PublicKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes)
            .map_err(|_| "a public key is 64 hex digits (`mantle keygen` makes one)".to_owned())?;
        VerifyingKey::from_bytes(&bytes).map(PublicKey).map_err(|_| "not a valid ed25519 public key".to_owned())
    }
}

impl TryFrom<String> for PublicKey {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl PublicKey {
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl From<VerifyingKey> for PublicKey {
    fn from(key: VerifyingKey) -> Self {
        PublicKey(key)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

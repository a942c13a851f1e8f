//! The words every layer of mantle shares: tenant and module identifiers,
//! model names and versions, grants, SHA-256 digests and the limits of one
//! request, and how to show text an untrusted party controls
//! ([`untrusted`]). Each is checked when it is made, so a value of one of
//! these types is always valid; they depend on nothing but serde and sha2.

pub mod untrusted;

use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A tenant or module identifier: lowercase letters, digits, `-` and `_`,
/// starting with a letter or digit, at most 63 characters. It appears in
/// URLs and metric labels as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Id(String);

impl TryFrom<String> for Id {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let valid = text.len() <= 63
            && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if valid {
            Ok(Id(text))
        } else {
            Err(format!(
                "`{text}` is not a valid id: use 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
            ))
        }
    }
}

/// A model name or version: letters, digits, `.`, `-` and `_`, at most
/// 128 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Name(String);

impl TryFrom<String> for Name {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let valid = !text.is_empty()
            && text.len() <= 128
            && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if valid {
            Ok(Name(text))
        } else {
            Err(format!("`{text}` is not a valid model name or version: use letters, digits, `.`, `-` or `_`"))
        }
    }
}

impl Name {
    /// Version `1`, the version of a model that names none.
    pub fn first_version() -> Name {
        Name("1".to_owned())
    }
}

macro_rules! checked_text {
    ($($name:ident),*) => {$(
        impl $name {
            /// Checks `text` and makes it one.
            pub fn new(text: impl Into<String>) -> Result<Self, String> {
                Self::try_from(text.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}

checked_text!(Id, Name);

/// A grant: `name` for every version of a model, or `name@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Grant {
    pub name: Name,
    pub version: Option<Name>,
}

impl TryFrom<String> for Grant {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.split_once('@') {
            None => Ok(Grant { name: Name::try_from(text)?, version: None }),
            Some((name, version)) => {
                Ok(Grant { name: Name::try_from(name.to_owned())?, version: Some(Name::try_from(version.to_owned())?) })
            }
        }
    }
}

impl Grant {
    /// Every version of model `name`.
    pub fn every_version(name: Name) -> Grant {
        Grant { name, version: None }
    }

    /// Whether this grant covers version `version` of model `name`.
    pub fn covers(&self, name: &str, version: &str) -> bool {
        self.name.as_str() == name && self.version.as_ref().is_none_or(|v| v.as_str() == version)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            None => write!(f, "{}", self.name),
            Some(version) => write!(f, "{}@{version}", self.name),
        }
    }
}

/// A SHA-256 digest, written as 64 hex digits: of a bundle's file, of a
/// stored blob, of an API key or an operator token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Sha256(pub [u8; 32]);

impl TryFrom<String> for Sha256 {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl std::str::FromStr for Sha256 {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut digest = [0; 32];
        hex::decode_to_slice(text.trim(), &mut digest)
            .map_err(|_| format!("`{text}` is not a SHA-256: write it as 64 hex digits"))?;
        Ok(Sha256(digest))
    }
}

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        Sha256(sha2::Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// What one request of a module may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleLimits {
    /// Most bytes the guest instance may hold at once: its linear memories,
    /// its tables and its `wasi:nn` tensors, together.
    pub memory_bytes: usize,
    /// Wall-clock time for one request, from instantiation to the response.
    pub deadline: Duration,
}

impl ModuleLimits {
    /// Ceiling for any module's memory: the pooling allocator reserves
    /// address space for this much per linear memory.
    pub const MAX_MEMORY_BYTES: usize = 4 << 30;

    /// Checks that a guest could run within these limits at all.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory_bytes < 1 << 20 || self.memory_bytes > Self::MAX_MEMORY_BYTES {
            return Err(format!(
                "memory limit {} bytes is outside 1 MiB..={} GiB",
                self.memory_bytes,
                Self::MAX_MEMORY_BYTES >> 30
            ));
        }
        if self.deadline.is_zero() {
            return Err("the deadline is zero".to_owned());
        }
        Ok(())
    }
}

impl Default for ModuleLimits {
    fn default() -> Self {
        ModuleLimits { memory_bytes: 256 << 20, deadline: Duration::from_secs(10) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_refuse_what_cannot_appear_in_a_url_or_label() {
        for good in ["acme", "a", "0-tenant_x", &"a".repeat(63)] {
            assert!(Id::new(good).is_ok(), "{good}");
        }
        for bad in ["", "Acme", "-a", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(Id::new(bad).is_err(), "{bad}");
        }
        assert!(Name::new("efficientnet-lite0.v2_1").is_ok());
        assert!(Name::new("m@1").is_err() && Name::new("").is_err() && Name::new("a/b").is_err());
    }

    #[test]
    fn a_grant_covers_one_version_or_all() {
        let all = Grant::try_from("m".to_owned()).expect("grant");
        let one = Grant::try_from("m@2".to_owned()).expect("grant");
        assert!(all.covers("m", "1") && all.covers("m", "2") && !all.covers("n", "1"));
        assert!(one.covers("m", "2") && !one.covers("m", "1"));
        assert_eq!(one.to_string(), "m@2");
        assert!(Grant::try_from("m@".to_owned()).is_err());
    }

    #[test]
    fn a_digest_reads_back_what_it_writes() {
        let digest = Sha256::of(b"abc");
        assert_eq!(digest.to_string(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(digest.to_string().parse::<Sha256>(), Ok(digest));
        assert!("abc".parse::<Sha256>().is_err());
    }

    #[test]
    fn limits_a_guest_cannot_run_in_are_refused() {
        assert_eq!(ModuleLimits::default().validate(), Ok(()));
        let too_small = ModuleLimits { memory_bytes: 4096, ..Default::default() };
        assert!(too_small.validate().is_err_and(|m| m.contains("memory limit")));
        let too_large = ModuleLimits { memory_bytes: ModuleLimits::MAX_MEMORY_BYTES + 1, ..Default::default() };
        assert!(too_large.validate().is_err());
        let no_time = ModuleLimits { deadline: Duration::ZERO, ..Default::default() };
        assert!(no_time.validate().is_err_and(|m| m.contains("deadline")));
    }
}

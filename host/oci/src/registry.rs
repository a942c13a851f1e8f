//! Pushing an artifact to a registry and pulling one, through the OCI
//! distribution API (`oci-client`). A push uploads only the blobs the
//! registry lacks; a pull checks every blob against its descriptor before
//! the bundle is assembled.

use crate::{Artifact, MANIFEST_MEDIA_TYPE, OciError, oci_digest, packed_from, parse_digest, parse_manifest};
use mantle_bundle::Packed;
use mantle_types::Sha256;
pub use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use std::collections::BTreeMap;

/// The scheme a bundle's registry reference is written with.
pub const SCHEME: &str = "oci://";

/// The most a pulled bundle's blobs may add up to, as their descriptors
/// say, before any is fetched: a node's default `max_bundle_bytes`.
pub const MAX_PULL_BYTES: u64 = 1 << 30;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Plain HTTP instead of HTTPS: for a registry on loopback.
    pub insecure: bool,
    /// A user name and password for basic auth, or for the token the
    /// registry hands out in exchange (the distribution spec's bearer
    /// flow); anonymous when `None`.
    pub credentials: Option<(String, String)>,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The artifact's digest: its manifest's.
    pub digest: Sha256,
    /// Blobs uploaded, and their bytes.
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Blobs the registry already had.
    pub present: usize,
}

/// A registry reference, `oci://HOST[:PORT]/REPO[:TAG|@DIGEST]`.
pub fn parse_reference(text: &str) -> Result<Reference, OciError> {
    let rest = text
        .strip_prefix(SCHEME)
        .ok_or_else(|| OciError::Reference(format!("`{text}` does not start with {SCHEME}")))?;
    // A reference without a registry host would silently mean Docker Hub.
    if !rest.split('/').next().is_some_and(|host| host.contains(['.', ':']) || host == "localhost") {
        return Err(OciError::Reference(format!(
            "`{text}` names no registry host: write {SCHEME}HOST[:PORT]/REPO:TAG"
        )));
    }
    rest.parse().map_err(|e: oci_client::ParseError| OciError::Reference(format!("`{text}`: {e}")))
}

/// A client of one registry.
pub struct Registry {
    client: Client,
    auth: RegistryAuth,
}

impl Registry {
    pub fn new(access: &Access) -> Registry {
        // reqwest's rustls needs a process-wide provider; the first caller
        // installs ring, and a provider already installed is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: if access.insecure { ClientProtocol::Http } else { ClientProtocol::Https },
            ..ClientConfig::default()
        };
        let auth = match &access.credentials {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Registry { client: Client::new(config), auth }
    }

    /// Uploads the blobs of `artifact` that the registry lacks, then its
    /// manifest under `reference`'s tag.
    pub async fn push(&self, reference: &Reference, artifact: &Artifact) -> Result<Pushed, OciError> {
        let failed = |what: &str, e: oci_client::errors::OciDistributionError| {
            OciError::Registry(format!("{what} on {reference}: {e}"))
        };
        self.client.auth(reference, &self.auth, RegistryOperation::Push).await.map_err(|e| failed("signing in", e))?;
        let mut pushed = Pushed { digest: artifact.digest(), uploaded: 0, uploaded_bytes: 0, present: 0 };
        for (digest, bytes) in &artifact.blobs {
            let digest = oci_digest(digest);
            let exists =
                self.client.blob_exists(reference, &digest).await.map_err(|e| failed("looking up a blob", e))?;
            if exists {
                pushed.present += 1;
                continue;
            }
            self.client
                .push_blob(reference, bytes.clone(), &digest)
                .await
                .map_err(|e| failed("uploading a blob", e))?;
            pushed.uploaded += 1;
            pushed.uploaded_bytes += bytes.len() as u64;
        }
        let content_type = http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
        self.client
            .push_manifest_raw(reference, artifact.manifest_bytes.clone(), content_type)
            .await
            .map_err(|e| failed("uploading the manifest", e))?;
        Ok(pushed)
    }

    /// The digest of the artifact `reference` names now, from the
    /// registry's answer to a HEAD of its manifest: what a node following
    /// a tag asks on every poll, without reading the manifest.
    pub async fn digest(&self, reference: &Reference) -> Result<Sha256, OciError> {
        let digest = self
            .client
            .fetch_manifest_digest(reference, &self.auth)
            .await
            .map_err(|e| OciError::Registry(format!("looking up {reference}: {e}")))?;
        parse_digest(&digest)
    }

    /// The packed bundle `reference` names, every blob fetched.
    pub async fn pull(&self, reference: &Reference) -> Result<Pulled, OciError> {
        self.pull_reusing(reference, MAX_PULL_BYTES, |_| None).await
    }

    /// The packed bundle `reference` names, fetching only the blobs that
    /// `local` does not give. An artifact whose blobs add up to more than
    /// `max_bytes` is refused before any is fetched. Every blob, fetched or
    /// given, is checked against its descriptor; the bundle is still to be
    /// opened.
    pub async fn pull_reusing(
        &self,
        reference: &Reference,
        max_bytes: u64,
        local: impl Fn(&Sha256) -> Option<Vec<u8>>,
    ) -> Result<Pulled, OciError> {
        let failed = |what: &str, e: oci_client::errors::OciDistributionError| {
            OciError::Registry(format!("{what} from {reference}: {e}"))
        };
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &[MANIFEST_MEDIA_TYPE])
            .await
            .map_err(|e| failed("reading the manifest", e))?;
        let digest = Sha256::of(&bytes);
        if let Some(pinned) = reference.digest()
            && pinned != oci_digest(&digest)
        {
            return Err(OciError::Registry(format!(
                "the registry served a manifest of digest {}",
                oci_digest(&digest)
            )));
        }
        let manifest = parse_manifest(&bytes)?;
        let descriptors = || std::iter::once(&manifest.config).chain(&manifest.layers);
        let total = descriptors().map(|d| d.size).fold(0u64, u64::saturating_add);
        if total > max_bytes {
            return Err(OciError::Registry(format!(
                "the artifact's blobs add up to {total} bytes, over the {max_bytes} a bundle may have"
            )));
        }
        let mut pulled = Pulled { digest, packed: Packed::default(), fetched: 0, fetched_bytes: 0, reused: 0 };
        let mut blobs = BTreeMap::new();
        for descriptor in descriptors() {
            if blobs.contains_key(&descriptor.digest) {
                continue;
            }
            let sha256 = parse_digest(&descriptor.digest)?;
            if let Some(bytes) = local(&sha256) {
                pulled.reused += 1;
                blobs.insert(descriptor.digest.clone(), bytes);
                continue;
            }
            // The descriptor's size bounds what is read: a registry that
            // sends more is cut off there, not buffered.
            let mut capped = Capped::with_limit(descriptor.size.min(max_bytes));
            let layer = oci_client::manifest::OciDescriptor {
                digest: descriptor.digest.clone(),
                size: i64::try_from(descriptor.size).unwrap_or(i64::MAX),
                ..Default::default()
            };
            self.client.pull_blob(reference, &layer, &mut capped).await.map_err(|e| failed("reading a blob", e))?;
            pulled.fetched += 1;
            pulled.fetched_bytes += capped.bytes.len() as u64;
            blobs.insert(descriptor.digest.clone(), capped.bytes);
        }
        // Each blob is handed over as it is, but for one that several
        // layers name (files with the same bytes), which is copied for all
        // but the last.
        let mut uses: BTreeMap<&str, usize> = BTreeMap::new();
        for descriptor in descriptors() {
            *uses.entry(descriptor.digest.as_str()).or_default() += 1;
        }
        pulled.packed = packed_from(&manifest, |descriptor| {
            let left = uses.get_mut(descriptor.digest.as_str()).map_or(0, |n| {
                *n -= 1;
                *n
            });
            let bytes =
                if left == 0 { blobs.remove(&descriptor.digest) } else { blobs.get(&descriptor.digest).cloned() };
            Ok::<_, OciError>(bytes.unwrap_or_default())
        })?;
        Ok(pulled)
    }
}

/// What a pull gave back, and what it had to fetch for it.
#[derive(Debug)]
pub struct Pulled {
    /// The artifact's digest: its manifest's.
    pub digest: Sha256,
    pub packed: Packed,
    /// Blobs read from the registry, and their bytes.
    pub fetched: usize,
    pub fetched_bytes: u64,
    /// Blobs the caller already had.
    pub reused: usize,
}

/// A blob's bytes as they arrive, refused past the size its descriptor
/// gives.
struct Capped {
    bytes: Vec<u8>,
    limit: u64,
}

impl Capped {
    fn with_limit(limit: u64) -> Capped {
        // What is reserved is bounded by what a pull may hold at all.
        let reserve = usize::try_from(limit).unwrap_or(0);
        Capped { bytes: Vec::with_capacity(reserve), limit }
    }
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.bytes.len() as u64 + buf.len() as u64 > self.limit {
            let message = format!("the registry sent more than the blob's {} bytes", self.limit);
            return std::task::Poll::Ready(Err(std::io::Error::other(message)));
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

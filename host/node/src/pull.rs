//! Deployments from a registry: the artifact a reference names is fetched,
//! only the blobs the node's store lacks, and deployed through
//! [`Node::deploy_bundle`], as an uploaded bundle is.

use crate::Node;
use crate::deploy::{DeployError, Outcome};
use mantle_oci::registry::{Pulled, Reference, Registry};
use mantle_oci::{OciError, oci_digest};

/// What a deployment from a registry fetched, besides what it deployed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PullOutcome {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The artifact's digest.
    pub digest: String,
    /// Blobs read from the registry, their bytes, and blobs the store had.
    pub fetched: usize,
    pub fetched_bytes: u64,
    pub reused: usize,
}

impl DeployError {
    /// Whether trying the same artifact again may succeed: the registry
    /// could not be read or served bytes other than the digests say, or the
    /// disk is full. Anything else is the artifact's own fault.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DeployError::Registry(OciError::Registry(_) | OciError::BlobMismatch { .. }) | DeployError::Store(_)
        )
    }
}

impl Node {
    /// Fetches the artifact `reference` names from `registry`, reusing the
    /// blobs the store has, and deploys it for `tenant`.
    pub async fn deploy_from(
        &self,
        tenant: &str,
        registry: &Registry,
        reference: &Reference,
        activate: bool,
    ) -> Result<PullOutcome, DeployError> {
        // Refused before anything is fetched, as an upload would be.
        self.store()?;
        if self.tenant(tenant).is_none() {
            return Err(DeployError::UnknownTenant(tenant.to_owned()));
        }
        let limit = self.settings.max_bundle_bytes as u64;
        let pulled = registry
            .pull_reusing(reference, limit, |blob| tokio::task::block_in_place(|| self.stored_blob(blob)))
            .await?;
        let Pulled { digest, packed, fetched, fetched_bytes, reused } = pulled;
        let bundle = tokio::task::block_in_place(|| packed.open())?;
        let outcome = self.deploy_bundle(tenant, &bundle, activate).await?;
        Ok(PullOutcome { outcome, digest: oci_digest(&digest), fetched, fetched_bytes, reused })
    }
}

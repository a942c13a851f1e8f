//! Registry tags a node keeps deployed: each `[[tenant.follow]]` is polled
//! with a HEAD of its manifest, and when the tag has moved to an artifact
//! the node does not serve, the node fetches the blobs its store lacks and
//! deploys the bundle through [`Node::deploy_bundle`], the admin API's path.
//! While the registry is unreachable the node keeps serving what it has and
//! polls again with backoff; an artifact that fails a check is refused once
//! and not fetched again until the tag moves.

use crate::Node;
use mantle_manifest::node::FollowConfig;
use mantle_oci::oci_digest;
use mantle_oci::registry::{Access, Reference, Registry, parse_reference};
use mantle_types::Sha256;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// The longest a failing follow waits between polls.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// One followed tag, and what its polls found.
pub struct Follow {
    tenant: String,
    reference: Reference,
    text: String,
    interval: Duration,
    access: Access,
    status: Mutex<FollowStatus>,
}

/// What the operator sees of a followed tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FollowStatus {
    pub tenant: String,
    pub reference: String,
    /// The digest of the artifact the tenant serves from this tag.
    pub digest: Option<String>,
    /// The deployment and version it serves.
    pub deployment: Option<String>,
    pub version: Option<String>,
    /// When the tag was last looked up, in milliseconds since the epoch.
    pub last_check_ms: Option<u64>,
    /// Why the last poll failed or the last new artifact was refused;
    /// `None` once a poll succeeds with nothing refused.
    pub last_error: Option<String>,
    /// Polls that failed in a row: what the backoff counts.
    pub failures: u32,
    /// An artifact the tag names that was refused: it is not fetched
    /// again until the tag moves.
    pub refused: Option<String>,
    /// Blobs fetched from the registry and reused from the store, over
    /// every pull.
    pub fetched_blobs: u64,
    pub fetched_bytes: u64,
    pub reused_blobs: u64,
}

/// Why a follow could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("follow `{reference}`: {message}")]
    Invalid { reference: String, message: String },
}

impl Follow {
    /// The follow `config` asks for, on a node that keeps deployments if
    /// `stored`.
    pub(crate) fn new(tenant: &str, config: &FollowConfig, stored: bool) -> Result<Follow, FollowError> {
        let invalid = |message: String| FollowError::Invalid { reference: config.reference.clone(), message };
        if !stored {
            return Err(invalid("the node keeps no deployments: it was started without a data directory".to_owned()));
        }
        let reference = parse_reference(&config.reference).map_err(|e| invalid(e.to_string()))?;
        let password = match (&config.password, &config.password_env, &config.password_file) {
            (Some(password), _, _) => Some(password.clone()),
            (None, Some(variable), _) => Some(
                std::env::var(variable)
                    .map_err(|_| invalid(format!("the environment variable {variable} holds no password")))?,
            ),
            (None, None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid(format!("cannot read the password file {}: {e}", path.display())))?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, None, None) => None,
        };
        let access = Access { insecure: config.insecure, credentials: config.username.clone().zip(password) };
        let status =
            FollowStatus { tenant: tenant.to_owned(), reference: config.reference.clone(), ..FollowStatus::default() };
        Ok(Follow {
            tenant: tenant.to_owned(),
            reference,
            text: config.reference.clone(),
            interval: Duration::from_millis(config.interval_ms),
            access,
            status: Mutex::new(status),
        })
    }

    pub fn status(&self) -> FollowStatus {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update(&self, change: impl FnOnce(&mut FollowStatus)) {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Why the tenant has nothing to serve from this tag yet, if so: no
    /// artifact of it was deployed or refused since the node started, and
    /// the store restored nothing for the tenant either.
    fn pending(&self, node: &Node) -> Option<String> {
        let last_error = {
            let status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            if status.digest.is_some() || status.refused.is_some() {
                return None;
            }
            status.last_error.clone()
        };
        // The status lock is released: a probe never holds it while it
        // reads what the tenant serves.
        if node.tenant(&self.tenant).is_some_and(|tenant| !tenant.active().is_empty()) {
            return None;
        }
        Some(match last_error {
            Some(error) => format!("waiting for the first deployment of {}: {error}", self.text),
            None => format!("waiting for the first deployment of {}", self.text),
        })
    }
}

impl Node {
    /// What each followed tag's polls found.
    pub fn follows(&self) -> Vec<FollowStatus> {
        self.follows.iter().map(|follow| follow.status()).collect()
    }

    /// Why the node is not ready to take traffic for a followed tag, if
    /// it is not: a fresh node behind a load balancer would answer 404 for
    /// the tenant's routes until its first pull lands. A node that restored
    /// something for the tenant from its store is ready at once, even while
    /// the registry is unreachable.
    pub fn follow_pending(&self) -> Option<String> {
        self.follows.iter().find_map(|follow| follow.pending(self))
    }

    /// Starts polling every followed tag, each in a task of its own, until
    /// the tasks are aborted or the runtime stops.
    pub fn start_following(self: &Arc<Node>) -> Vec<tokio::task::JoinHandle<()>> {
        let follows = self.follows.iter().map(Arc::clone);
        follows.map(|follow| tokio::spawn(keep_following(Arc::clone(self), follow))).collect()
    }
}

async fn keep_following(node: Arc<Node>, follow: Arc<Follow>) {
    let registry = Registry::new(&follow.access);
    loop {
        let failures = poll(&node, &follow, &registry).await;
        let wait = if failures == 0 { follow.interval } else { backoff(follow.interval, failures) };
        tokio::time::sleep(jittered(wait)).await;
    }
}

/// How long to wait after `failures` failed polls in a row: the interval,
/// doubled for each, up to [`MAX_BACKOFF`] (or the interval, if longer).
fn backoff(interval: Duration, failures: u32) -> Duration {
    let doubled = interval.saturating_mul(1u32 << failures.min(16));
    doubled.min(MAX_BACKOFF.max(interval))
}

/// `wait`, a random tenth more or less.
fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(0.9 + 0.2 * fastrand::f64())
}

/// Looks the tag up once and, if it moved, deploys what it names. Returns
/// the failures in a row so far.
async fn poll(node: &Node, follow: &Follow, registry: &Registry) -> u32 {
    let checked = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |t| t.as_millis() as u64);
    let outcome = match registry.digest(&follow.reference).await {
        Ok(digest) => follow_to(node, follow, registry, digest).await,
        Err(e) => Err(Failure::Transient(e.to_string())),
    };
    let mut failures = 0;
    follow.update(|status| {
        status.last_check_ms = Some(checked);
        match outcome {
            Ok(()) => status.failures = 0,
            Err(Failure::Transient(message)) => {
                tracing::warn!(
                    tenant = %follow.tenant, reference = %follow.text, failures = status.failures + 1,
                    "cannot follow the tag; serving what the node has: {}", mantle_types::untrusted::escaped(&message)
                );
                status.failures = status.failures.saturating_add(1);
                status.last_error = Some(message);
            }
            Err(Failure::Refused { digest, message }) => {
                tracing::error!(
                    tenant = %follow.tenant, reference = %follow.text, digest = %oci_digest(&digest),
                    "refused the artifact the tag moved to; the active version keeps serving: {}",
                    mantle_types::untrusted::escaped(&message)
                );
                status.failures = 0;
                status.refused = Some(oci_digest(&digest));
                status.last_error = Some(message);
            }
        }
        failures = status.failures;
    });
    failures
}

/// Why a poll did not end with the tag's artifact served.
enum Failure {
    /// The registry could not be read, or the disk is full: the next poll
    /// tries again.
    Transient(String),
    /// The artifact fails a check: it is not fetched again.
    Refused { digest: Sha256, message: String },
}

/// Serves the artifact of `digest`, unless it is served already or was
/// refused.
async fn follow_to(node: &Node, follow: &Follow, registry: &Registry, digest: Sha256) -> Result<(), Failure> {
    let shown = oci_digest(&digest);
    let status = follow.status();
    if status.digest.as_deref() == Some(shown.as_str()) {
        // The tag names what serves: whatever was refused is behind it.
        follow.update(|status| {
            status.last_error = None;
            status.refused = None;
        });
        return Ok(());
    }
    if status.refused.as_deref() == Some(shown.as_str()) {
        return Ok(());
    }
    // Pinned to the digest just seen: a tag that moves again mid-pull does
    // not mix two artifacts.
    let pinned = follow.reference.clone_with_digest(shown.clone());
    // Released after the status below is updated: see `Loading`.
    let _loading = crate::allocator::Loading::start();
    let pulled = node.deploy_from(&follow.tenant, registry, &pinned, true).await.map_err(|e| {
        let message = error_chain(&e);
        if e.is_transient() { Failure::Transient(message) } else { Failure::Refused { digest, message } }
    })?;
    let deployed = &pulled.outcome;
    tracing::info!(
        tenant = %follow.tenant, reference = %follow.text, digest = %shown, deployment = %deployed.deployment,
        version = %deployed.version, fetched = pulled.fetched, fetched_bytes = pulled.fetched_bytes,
        reused = pulled.reused, "followed the tag"
    );
    follow.update(|status| {
        status.digest = Some(shown);
        status.deployment = Some(deployed.deployment.clone());
        status.version = Some(deployed.version.clone());
        status.last_error = None;
        status.refused = None;
        status.fetched_blobs += pulled.fetched as u64;
        status.fetched_bytes += pulled.fetched_bytes;
        status.reused_blobs += pulled.reused as u64;
    });
    Ok(())
}

/// An error and its causes, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_follow_backs_off_to_a_ceiling() {
        let second = Duration::from_secs(1);
        assert_eq!(backoff(second, 1), Duration::from_secs(2));
        assert_eq!(backoff(second, 3), Duration::from_secs(8));
        assert_eq!(backoff(second, 40), MAX_BACKOFF);
        // An interval longer than the ceiling is not shortened by failing.
        assert_eq!(backoff(Duration::from_secs(600), 2), Duration::from_secs(600));
        for _ in 0..100 {
            let wait = jittered(second);
            assert!(wait >= Duration::from_millis(900) && wait <= Duration::from_millis(1100), "{wait:?}");
        }
    }
}

//! What a tenant may put on the node at once: a bounded number of running
//! requests, a bounded queue behind them, and a bounded body size. Every
//! refusal is an immediate status, never a hang.

use super::error::ApiError;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use mantle_manifest::node::TenantLimits;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long the node reads and discards an oversized body before it
/// answers 413, so the client gets the answer instead of a reset
/// connection; past this it answers anyway.
const DISCARD_TIME: Duration = Duration::from_secs(2);
/// How much of an oversized body the node reads and discards at most.
const DISCARD_BYTES: usize = 64 << 20;

/// One tenant's turns: who runs now and who waits.
pub struct TenantGate {
    running: Arc<Semaphore>,
    max_running: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
    queue_timeout: Duration,
}

/// A turn to run; the next waiter goes when it is dropped.
pub struct Turn {
    _permit: OwnedSemaphorePermit,
}

impl TenantGate {
    pub fn new(limits: &TenantLimits) -> Self {
        TenantGate {
            running: Arc::new(Semaphore::new(limits.max_concurrent)),
            max_running: limits.max_concurrent,
            waiting: AtomicUsize::new(0),
            max_waiting: limits.max_queued,
            queue_timeout: Duration::from_millis(limits.queue_timeout_ms),
        }
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.max_running - self.running.available_permits()
    }

    /// Requests waiting for a turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits for a turn: 429 at once when the queue is full, 503 when the
    /// wait is longer than the queue timeout.
    pub async fn admit(&self) -> Result<Turn, ApiError> {
        if let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() {
            return Ok(Turn { _permit: permit });
        }
        let _place = QueuePlace::take(&self.waiting, self.max_waiting).ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the tenant already has {} requests running and {} waiting; try again shortly",
                    self.max_running, self.max_waiting
                ),
            )
            .retry_after(1)
        })?;
        match tokio::time::timeout(self.queue_timeout, Arc::clone(&self.running).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Turn { _permit: permit }),
            Ok(Err(_)) | Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no turn came within {:?}; try again shortly", self.queue_timeout),
            )
            .retry_after(1)),
        }
    }
}

/// A place in a tenant's queue, given back when dropped.
struct QueuePlace<'a>(&'a AtomicUsize);

impl<'a> QueuePlace<'a> {
    fn take(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(QueuePlace(waiting))
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a turn at `gate` for a request and reads its body, at most
/// `limit` bytes. A body that declares a larger length is refused before it
/// queues. Whatever the refusal, what is left of the body is drained first.
pub async fn admit_request(
    gate: &TenantGate,
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<(Turn, Bytes), ApiError> {
    if declared_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(drained(body, too_large(limit)).await);
    }
    let turn = match gate.admit().await {
        Ok(turn) => turn,
        Err(refusal) => return Err(drained(body, refusal).await),
    };
    let body = read_body(body, headers, limit).await?;
    Ok((turn, body))
}

/// `refusal`, once what is left of `body` has been read and dropped within
/// bounds. Closing a socket with unread data resets the connection, and the
/// client would lose the answer, so every refusal that comes before the
/// body is read goes through here.
pub async fn drained(body: Body, refusal: ApiError) -> ApiError {
    discard(body).await;
    refusal
}

/// Reads a request body of at most `limit` bytes; a larger one is 413,
/// however it is framed.
async fn read_body(mut body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let capacity = declared_length(headers).map_or(0, |n| n.min(limit as u64) as usize);
    let mut read = Vec::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if read.len() + data.len() > limit {
            discard(body).await;
            return Err(too_large(limit));
        }
        read.extend_from_slice(&data);
    }
    Ok(Bytes::from(read))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than the limit of {limit} bytes"))
}

/// Reads and drops what is left of a refused body, within bounds.
async fn discard(mut body: Body) {
    let drain = async {
        let mut read = 0;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > DISCARD_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

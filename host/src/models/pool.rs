//! The inference pool: a fixed set of threads, one per core, that run model
//! computations so that they never block the async runtime.

use std::panic::{AssertUnwindSafe, catch_unwind};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot start the inference pool: {0}")]
    Start(String),
    #[error("the inference job panicked: {0}")]
    Panicked(String),
}

/// Runs blocking inference jobs on dedicated threads.
pub struct InferencePool {
    threads: rayon::ThreadPool,
}

impl InferencePool {
    /// A pool with `threads` workers; `None` means one per core.
    pub fn new(threads: Option<usize>) -> Result<Self, PoolError> {
        let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1);
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mantle-infer-{i}"))
            .build()
            .map_err(|e| PoolError::Start(e.to_string()))?;
        Ok(InferencePool { threads })
    }

    pub fn size(&self) -> usize {
        self.threads.current_num_threads()
    }

    /// Runs `job` on a pool thread and waits for it without blocking the
    /// executor. A panic in `job` is caught and reported, so a model that
    /// panics on a hostile input costs one request, not the node.
    pub async fn run<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> Result<R, PoolError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.threads.spawn(move || {
            let _ = done.send(catch_unwind(AssertUnwindSafe(job)).map_err(panic_message));
        });
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(PoolError::Panicked(message)),
            Err(_) => Err(PoolError::Panicked("the worker dropped the job".to_owned())),
        }
    }

    /// Runs `job` on the calling thread, catching a panic as [`Self::run`]
    /// does. Only for a job too short to be worth the two thread wake-ups
    /// of a hand-off: it blocks the caller, which may be an executor thread.
    pub fn run_here<R>(job: impl FnOnce() -> R) -> Result<R, PoolError> {
        catch_unwind(AssertUnwindSafe(job)).map_err(|panic| PoolError::Panicked(panic_message(panic)))
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

//! The inference pool: a fixed set of threads, one per core, that run model
//! computations so that they never block the async runtime, shared fairly
//! between the owners that queue work on it. An owner is any name the
//! caller chooses; the runtime queues each tenant's work under its id.
//!
//! Each owner has its own queue. A thread that comes free takes the next
//! job of the owner with the fewest jobs running, and among those the one
//! that has used the least pool time since it last had work: an owner that
//! queues many long inferences has them run one after another on whatever
//! threads others leave, while a neighbour's job waits at most for one of
//! them to finish. An owner alone on the pool uses every thread. A job
//! whose caller has stopped waiting (its request ended, or passed its
//! deadline) is dropped without running.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot start the inference pool: {0}")]
    Start(String),
    #[error("the inference job panicked: {0}")]
    Panicked(String),
    #[error("the request's deadline passed while the inference waited for a thread")]
    Expired,
}

/// Runs blocking inference jobs on dedicated threads, fairly across owners.
pub struct InferencePool {
    shared: Arc<Shared>,
}

struct Shared {
    queues: Mutex<Queues>,
    work: Condvar,
}

#[derive(Default)]
struct Queues {
    /// Owners with jobs queued or running.
    owners: HashMap<Arc<str>, OwnerQueue>,
    stopping: bool,
}

#[derive(Default)]
struct OwnerQueue {
    jobs: VecDeque<Job>,
    running: usize,
    /// Pool time this owner's jobs have taken since it last had work,
    /// starting from where the others were when it came.
    used: Duration,
}

struct Job {
    deadline: Instant,
    /// Runs the job, or tells its caller it expired; returns whether it
    /// ran. Nothing runs if the caller has stopped waiting.
    task: Box<dyn FnOnce(bool) -> bool + Send>,
}

impl Queues {
    /// The next job to run and whose it is: the owner with the fewest jobs
    /// running, then the least pool time used.
    fn next(&mut self) -> Option<(Arc<str>, Job)> {
        let (owner, queue) = self
            .owners
            .iter_mut()
            .filter(|(_, queue)| !queue.jobs.is_empty())
            .min_by_key(|(_, queue)| (queue.running, queue.used))?;
        let job = queue.jobs.pop_front()?;
        queue.running += 1;
        Some((Arc::clone(owner), job))
    }

    fn push(&mut self, owner: Arc<str>, job: Job) {
        // A owner that comes back starts level with the others, so that
        // time spent idle is not credit to spend all at once.
        let level = self.owners.values().map(|queue| queue.used).min().unwrap_or_default();
        let queue = self.owners.entry(owner).or_insert_with(|| OwnerQueue { used: level, ..Default::default() });
        queue.jobs.push_back(job);
    }

    fn finished(&mut self, owner: &Arc<str>, elapsed: Duration) {
        if let Some(queue) = self.owners.get_mut(owner) {
            queue.running -= 1;
            queue.used += elapsed;
            if queue.running == 0 && queue.jobs.is_empty() {
                self.owners.remove(owner);
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // The lock is never held while a job runs, so a poisoned lock
        // still holds consistent queues.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn work(&self) {
        loop {
            let (owner, job) = {
                let mut queues = self.lock();
                loop {
                    if queues.stopping {
                        return;
                    }
                    if let Some(next) = queues.next() {
                        break next;
                    }
                    queues = self.work.wait(queues).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let started = Instant::now();
            let ran = (job.task)(started >= job.deadline);
            let elapsed = if ran { started.elapsed() } else { Duration::ZERO };
            self.lock().finished(&owner, elapsed);
        }
    }
}

impl InferencePool {
    /// A pool with `threads` workers; `None` means one per core.
    pub fn new(threads: Option<usize>) -> Result<Self, PoolError> {
        let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1);
        let shared = Arc::new(Shared { queues: Mutex::default(), work: Condvar::new() });
        for i in 0..threads {
            let worker = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("mantle-infer-{i}"))
                .spawn(move || worker.work())
                .map_err(|e| PoolError::Start(e.to_string()))?;
        }
        Ok(InferencePool { shared })
    }

    /// Queues `job` for `owner` and waits for it without blocking the
    /// executor. If `deadline` passes before a thread takes the job, or
    /// the returned future is dropped, the job does not run. A panic in
    /// `job` is caught and reported, so a model that panics on a hostile
    /// input costs one request, not the node.
    pub async fn run<R: Send + 'static>(
        &self,
        owner: Arc<str>,
        deadline: Instant,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, PoolError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let task = move |expired: bool| {
            if done.is_closed() {
                return false;
            }
            if expired {
                let _ = done.send(Err(PoolError::Expired));
                return false;
            }
            let outcome =
                catch_unwind(AssertUnwindSafe(job)).map_err(|panic| PoolError::Panicked(panic_message(panic)));
            let _ = done.send(outcome);
            true
        };
        self.shared.lock().push(owner, Job { deadline, task: Box::new(task) });
        self.shared.work.notify_one();
        match result.await {
            Ok(outcome) => outcome,
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

impl Drop for InferencePool {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.work.notify_all();
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(600)
    }

    /// A job that holds its thread for `time` and says when it ended.
    fn busy(time: Duration) -> impl FnOnce() -> Instant + Send + 'static {
        move || {
            std::thread::sleep(time);
            Instant::now()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_neighbour_waits_for_one_long_job_not_for_an_owners_whole_queue() {
        let pool = Arc::new(InferencePool::new(Some(1)).expect("a pool"));
        let heavy: Arc<str> = Arc::from("heavy");
        let started = Instant::now();
        let flood: Vec<_> = (0..8)
            .map(|_| {
                let (pool, heavy) = (Arc::clone(&pool), Arc::clone(&heavy));
                tokio::spawn(async move { pool.run(heavy, far(), busy(Duration::from_millis(50))).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let light = pool.run(Arc::from("light"), far(), busy(Duration::ZERO)).await.expect("the light job runs");
        // FIFO would have put it behind 400 ms of the heavy owner's work.
        assert!(light - started < Duration::from_millis(150), "the light job ended after {:?}", light - started);
        for job in flood {
            job.await.expect("a task").expect("a heavy job runs");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_owner_alone_uses_every_thread() {
        let pool = Arc::new(InferencePool::new(Some(2)).expect("a pool"));
        let started = Instant::now();
        let jobs: Vec<_> = (0..4)
            .map(|_| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move { pool.run(Arc::from("only"), far(), busy(Duration::from_millis(100))).await })
            })
            .collect();
        for job in jobs {
            job.await.expect("a task").expect("a job runs");
        }
        // Four 100 ms jobs on two threads: two rounds, not four.
        assert!(started.elapsed() < Duration::from_millis(350), "took {:?}", started.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_jobs_past_their_deadline_or_abandoned_never_run() {
        let pool = Arc::new(InferencePool::new(Some(1)).expect("a pool"));
        let runs = Arc::new(AtomicUsize::new(0));
        let blocker = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.run(Arc::from("a"), far(), busy(Duration::from_millis(150))).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let counted = |runs: &Arc<AtomicUsize>| {
            let runs = Arc::clone(runs);
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        };
        let soon = Instant::now() + Duration::from_millis(30);
        let expired = pool.run(Arc::from("b"), soon, counted(&runs));
        let abandoned =
            tokio::time::timeout(Duration::from_millis(30), pool.run(Arc::from("c"), far(), counted(&runs)));
        let (expired, abandoned) = tokio::join!(expired, abandoned);
        assert!(matches!(expired, Err(PoolError::Expired)), "{expired:?}");
        assert!(abandoned.is_err(), "the caller stopped waiting");
        blocker.await.expect("a task").expect("the blocker runs");
        // Whatever was queued behind the blocker has been looked at by now.
        pool.run(Arc::from("d"), far(), || ()).await.expect("a last job runs");
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_panicking_job_costs_only_its_caller() {
        let pool = InferencePool::new(Some(1)).expect("a pool");
        let panicked = pool.run(Arc::from("t"), far(), || panic!("a model broke")).await;
        assert!(matches!(&panicked, Err(PoolError::Panicked(m)) if m.contains("a model broke")), "{panicked:?}");
        assert_eq!(pool.run(Arc::from("t"), far(), || 7).await.expect("the next job runs"), 7);
    }
}

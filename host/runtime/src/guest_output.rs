//! What a guest writes (stdout, stderr and `context.log`) goes to the node
//! log line by line, tagged with tenant, module and request, escaped, and
//! within two budgets: one per request across all three outlets, and a
//! rate per tenant over time, so that neither one request nor a tenant
//! sending many can flood the log or the disk under it. What is past a
//! budget is dropped and counted.

use bytes::Bytes;
use mantle_types::untrusted::escaped;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Bytes of guest output logged per request, stdout, stderr and
/// `context.log` together; the rest is counted and dropped.
pub const REQUEST_OUTPUT_BYTES: usize = 64 << 10;
/// Bytes of guest output a tenant may have logged per second, over all its
/// requests, once its burst is spent.
pub const TENANT_OUTPUT_BYTES_PER_SECOND: usize = 64 << 10;
/// Bytes a tenant may have logged at once before its rate applies.
pub const TENANT_OUTPUT_BURST_BYTES: usize = 256 << 10;
/// Longest line logged; longer lines are cut.
const MAX_LINE: usize = 4 << 10;

/// Who is writing: attached to every line logged.
#[derive(Debug, Clone)]
pub(crate) struct LogTags {
    pub tenant: Arc<str>,
    pub module: Arc<str>,
    pub request_id: Arc<str>,
}

impl LogTags {
    /// For the instance a module is tried with when it is loaded.
    pub(crate) fn loading(tenant: &Arc<str>, module: &Arc<str>) -> Self {
        LogTags { tenant: Arc::clone(tenant), module: Arc::clone(module), request_id: Arc::from("load") }
    }
}

/// A tenant's allowance of logged guest output over time: a token bucket
/// that every request of the tenant draws from.
#[derive(Debug)]
pub(crate) struct OutputRate {
    bytes_per_second: f64,
    burst: f64,
    /// Bytes that may be logged now, and when that was last worked out.
    bucket: Mutex<(f64, Instant)>,
}

impl OutputRate {
    pub(crate) fn new(bytes_per_second: usize, burst: usize) -> Self {
        OutputRate {
            bytes_per_second: bytes_per_second as f64,
            burst: burst as f64,
            bucket: Mutex::new((burst as f64, Instant::now())),
        }
    }

    /// Takes up to `wanted` bytes from the bucket; returns how many it had.
    fn take(&self, wanted: usize) -> usize {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, refilled) = &mut *bucket;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*refilled).as_secs_f64() * self.bytes_per_second).min(self.burst);
        *refilled = now;
        let granted = (wanted as f64).min(tokens.floor()).max(0.0);
        *tokens -= granted;
        granted as usize
    }
}

/// Which of a guest's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The level of a `context.log` line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// One request's guest output. Clones share one state and one budget.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    state: Arc<Mutex<OutputState>>,
}

struct OutputState {
    tags: LogTags,
    rate: Arc<OutputRate>,
    /// What is left of the request's budget.
    left: usize,
    logged: u64,
    dropped: u64,
    /// Bytes of an unfinished line, per stream.
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl OutputState {
    /// How many of `wanted` bytes both budgets allow; the rest is dropped.
    fn admit(&mut self, wanted: usize) -> usize {
        let granted = match wanted.min(self.left) {
            0 => 0,
            allowed => self.rate.take(allowed),
        };
        self.left -= granted;
        self.logged += granted as u64;
        self.dropped += (wanted - granted) as u64;
        granted
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        let granted = self.admit(bytes.len());
        let tags = self.tags.clone();
        let pending = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        pending.extend_from_slice(&bytes[..granted]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            emit_line(&tags, stream, &line[..line.len() - 1]);
        }
        if pending.len() >= MAX_LINE {
            emit_line(&tags, stream, &std::mem::take(pending));
        }
    }
}

fn emit_line(tags: &LogTags, stream: Stream, line: &[u8]) {
    let line = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
    let line = escaped(line.trim_end_matches('\r'));
    let LogTags { tenant, module, request_id } = tags;
    tracing::info!(target: "mantle::guest", %tenant, %module, %request_id, stream = stream.name(), "{line}");
}

impl GuestOutput {
    pub(crate) fn new(tags: LogTags, rate: Arc<OutputRate>) -> Self {
        let state = OutputState {
            tags,
            rate,
            left: REQUEST_OUTPUT_BYTES,
            logged: 0,
            dropped: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        GuestOutput { state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputState> {
        // A poisoned lock only means another writer panicked mid-line.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The guest's stdout or stderr, for its WASI context.
    pub(crate) fn stream(&self, stream: Stream) -> GuestStream {
        GuestStream { output: self.clone(), stream }
    }

    /// One `context.log` line: cut at the longest line, escaped, and
    /// charged to the same budgets as the guest's streams.
    pub(crate) fn log(&self, level: Level, message: &str) {
        let mut state = self.lock();
        let cut = match message.char_indices().nth(MAX_LINE) {
            Some((at, _)) => &message[..at],
            None => message,
        };
        let granted = state.admit(cut.len());
        let mut end = granted;
        while !cut.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            return;
        }
        let message = escaped(&cut[..end]);
        let LogTags { tenant, module, request_id } = &state.tags;
        macro_rules! emit {
            ($level:ident) => {
                tracing::$level!(target: "mantle::guest", %tenant, %module, %request_id, "{message}")
            };
        }
        match level {
            Level::Trace => emit!(trace),
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error => emit!(error),
        }
    }

    /// Logs what is left of unfinished lines and, if anything was dropped,
    /// one line that says how much. Returns the bytes logged and dropped.
    pub(crate) fn finish(&self) -> (u64, u64) {
        let mut state = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = match stream {
                Stream::Stdout => std::mem::take(&mut state.stdout),
                Stream::Stderr => std::mem::take(&mut state.stderr),
            };
            if !pending.is_empty() {
                emit_line(&state.tags, stream, &pending);
            }
        }
        if state.dropped > 0 {
            let LogTags { tenant, module, request_id } = &state.tags;
            tracing::warn!(
                target: "mantle::guest",
                %tenant, %module, %request_id,
                "guest output past its budget ({REQUEST_OUTPUT_BYTES} bytes a request, \
                 {TENANT_OUTPUT_BYTES_PER_SECOND} bytes a second a tenant): {} bytes not logged",
                state.dropped
            );
        }
        (state.logged, state.dropped)
    }
}

/// A guest's stdout or stderr: writes go to the request's [`GuestOutput`].
#[derive(Clone)]
pub(crate) struct GuestStream {
    output: GuestOutput,
    stream: Stream,
}

impl GuestStream {
    fn write_bytes(&self, bytes: &[u8]) {
        self.output.lock().write(self.stream, bytes);
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(MAX_LINE)
    }
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(rate: &Arc<OutputRate>) -> GuestOutput {
        let tags = LogTags { tenant: Arc::from("t"), module: Arc::from("m"), request_id: Arc::from("r") };
        GuestOutput::new(tags, Arc::clone(rate))
    }

    fn generous() -> Arc<OutputRate> {
        Arc::new(OutputRate::new(1 << 30, 1 << 30))
    }

    #[test]
    fn one_budget_covers_stdout_stderr_and_the_log() {
        let output = output(&generous());
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        let message = "y".repeat(100);
        for _ in 0..300 {
            output.stream(Stream::Stdout).write_bytes(&line);
            output.stream(Stream::Stderr).write_bytes(&line);
            output.log(Level::Info, &message);
        }
        let (logged, dropped) = output.finish();
        assert_eq!(logged, REQUEST_OUTPUT_BYTES as u64);
        assert_eq!(logged + dropped, 3 * 300 * 100);
    }

    #[test]
    fn a_tenant_draws_on_one_rate_across_its_requests() {
        let rate = Arc::new(OutputRate::new(1, 100_000));
        let mut logged = 0;
        for _ in 0..4 {
            let request = output(&rate);
            request.stream(Stream::Stdout).write_bytes(&vec![b'z'; REQUEST_OUTPUT_BYTES]);
            logged += request.finish().0;
        }
        // A second's refill at most, on a slow machine.
        assert!((100_000..100_010).contains(&logged), "{logged}");
    }

    #[test]
    fn a_line_without_newline_is_cut_at_the_maximum_length() {
        let output = output(&generous());
        output.stream(Stream::Stderr).write_bytes(&vec![b'y'; MAX_LINE * 3]);
        assert!(output.lock().stderr.len() < MAX_LINE, "pending {}", output.lock().stderr.len());
    }

    #[test]
    fn a_log_message_cut_by_the_budget_stays_whole_characters() {
        let rate = Arc::new(OutputRate::new(0, 5));
        let output = output(&rate);
        output.log(Level::Warn, "ééé");
        assert_eq!(output.finish(), (5, 1));
    }
}

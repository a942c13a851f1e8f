//! Guest stdout and stderr, forwarded line by line to the node log, tagged
//! with tenant, module and request, and capped per request so that a guest
//! cannot flood the log or the disk.

use bytes::Bytes;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Bytes of guest output logged per request; the rest is counted and dropped.
const BUDGET_BYTES: usize = 64 << 10;
/// Longest line logged; longer lines are cut.
const MAX_LINE: usize = 4 << 10;

/// Who is writing: attached to every line logged.
#[derive(Debug, Clone)]
pub(crate) struct LogTags {
    pub tenant: Arc<str>,
    pub module: Arc<str>,
    pub request_id: Arc<str>,
}

struct LineBuffer {
    tags: LogTags,
    stream: &'static str,
    pending: Vec<u8>,
    logged: usize,
    dropped: usize,
}

impl LineBuffer {
    fn write(&mut self, bytes: &[u8]) {
        let room = BUDGET_BYTES.saturating_sub(self.logged);
        let (kept, over) = bytes.split_at(bytes.len().min(room));
        self.logged += kept.len();
        self.dropped += over.len();
        self.pending.extend_from_slice(kept);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if self.pending.len() >= MAX_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = printable(&String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]));
        let LogTags { tenant, module, request_id } = &self.tags;
        tracing::info!(
            target: "mantle::guest",
            %tenant, %module, %request_id, stream = self.stream,
            "{line}"
        );
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        if self.dropped > 0 {
            let LogTags { tenant, module, request_id } = &self.tags;
            tracing::warn!(
                target: "mantle::guest",
                %tenant, %module, %request_id, stream = self.stream,
                "guest output over {BUDGET_BYTES} bytes: {} bytes not logged", self.dropped
            );
        }
    }
}

/// `text` with control characters replaced, so that a guest cannot forge
/// log lines or send escape sequences to an operator's terminal.
pub(crate) fn printable(text: &str) -> String {
    text.trim_end_matches(['\r', '\n'])
        .chars()
        .map(|c| if c.is_control() && c != '\t' { '\u{FFFD}' } else { c })
        .collect()
}

/// A guest's stdout or stderr. Cloned handles share one buffer and budget.
#[derive(Clone)]
pub(crate) struct GuestLog {
    buffer: Arc<Mutex<LineBuffer>>,
}

impl GuestLog {
    pub(crate) fn new(tags: LogTags, stream: &'static str) -> Self {
        let buffer = LineBuffer { tags, stream, pending: Vec::new(), logged: 0, dropped: 0 };
        GuestLog { buffer: Arc::new(Mutex::new(buffer)) }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        // A poisoned lock only means another writer panicked mid-line.
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        buffer.write(bytes);
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestLog {
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

impl tokio::io::AsyncWrite for GuestLog {
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

    fn tags() -> LogTags {
        LogTags { tenant: Arc::from("t"), module: Arc::from("m"), request_id: Arc::from("r") }
    }

    #[test]
    fn output_past_the_budget_is_counted_and_dropped() {
        let log = GuestLog::new(tags(), "stdout");
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..1000 {
            log.write_bytes(&line);
        }
        let buffer = log.buffer.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(buffer.logged, BUDGET_BYTES);
        assert_eq!(buffer.dropped, 100_000 - BUDGET_BYTES);
    }

    #[test]
    fn a_line_without_newline_is_cut_at_the_maximum_length() {
        let log = GuestLog::new(tags(), "stderr");
        log.write_bytes(&vec![b'y'; MAX_LINE * 3]);
        let buffer = log.buffer.lock().unwrap_or_else(|p| p.into_inner());
        assert!(buffer.pending.len() < MAX_LINE, "pending {}", buffer.pending.len());
    }

    #[test]
    fn control_characters_cannot_forge_log_lines() {
        assert_eq!(printable("ok\u{1b}[31m red\rINFO fake"), "ok\u{FFFD}[31m red\u{FFFD}INFO fake");
        assert_eq!(printable("tabs\tstay\r\n"), "tabs\tstay");
    }
}

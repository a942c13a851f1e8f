//! One keep-alive HTTP/1.1 connection that times each request from its
//! first byte sent to its last byte read.
//!
//! It is blocking and writes requests by hand: when the client shares a
//! core with the server it measures, the client's own work is in every
//! figure, so it does no more than a request needs. One `write` sends a
//! request, and reads wait in the kernel until the answer arrives: no
//! async runtime, no task to hand the request to. Answers must carry a
//! `Content-Length`, as every answer it reads here does.

use anyhow::{Context, bail, ensure};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// Longest header block accepted in an answer.
const MAX_HEAD: usize = 16 << 10;

pub struct Connection {
    stream: TcpStream,
    host: String,
    /// Bytes read past the last answer; empty between answers, as
    /// requests are sent one at a time.
    buffer: Vec<u8>,
}

impl Connection {
    /// Connects to `base` (`http://HOST:PORT`).
    pub fn open(base: &str) -> anyhow::Result<Connection> {
        let host = base.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let stream = TcpStream::connect(&host).with_context(|| format!("connecting to {host}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, host, buffer: Vec::with_capacity(MAX_HEAD) })
    }

    /// Sends `method path` with an empty body and reads the whole answer,
    /// which must be a success; the microseconds it took.
    pub fn time(&mut self, method: &str, path: &str, authorization: Option<&str>) -> anyhow::Result<f64> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: 0\r\n", self.host);
        if let Some(authorization) = authorization {
            request.push_str(&format!("authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        let started = Instant::now();
        self.stream.write_all(request.as_bytes()).with_context(|| format!("sending {method} {path}"))?;
        let status = self.read_answer().with_context(|| format!("reading the answer to {method} {path}"))?;
        let took = started.elapsed().as_secs_f64() * 1e6;
        ensure!((200..300).contains(&status), "{method} {path} answered {status}");
        Ok(took)
    }

    /// Reads one answer's head and body; its status code.
    fn read_answer(&mut self) -> anyhow::Result<u16> {
        self.buffer.clear();
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            ensure!(self.buffer.len() < MAX_HEAD, "the answer's head is over {MAX_HEAD} bytes");
            self.fill()?;
        };
        let head = std::str::from_utf8(&self.buffer[..head_end]).context("the answer's head is not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("no status in `{status_line}`"))?;
        let mut length = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse::<usize>().context("a content-length that is not a number")?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("a chunked answer; this client reads only answers with a content-length");
            }
        }
        let length = length.context("an answer without a content-length")?;
        while self.buffer.len() < head_end + length {
            self.fill()?;
        }
        ensure!(self.buffer.len() == head_end + length, "bytes after the answer, which no request asked for");
        Ok(status)
    }

    /// Appends what the socket has to the buffer; fails at end of stream.
    fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let read = self.stream.read(&mut chunk)?;
        ensure!(read > 0, "the server closed the connection");
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }
}

//! Test guest: misbehaves as its query says (or, with no query, its path:
//! `mantle run --path /forge`).
//!
//! - `recurse`: recurses until the stack runs out;
//! - `panic`: panics;
//! - `unreachable`: executes wasm's `unreachable`;
//! - `respond=N`: answers with N MiB;
//! - `flood=N`: writes N MiB to stdout and to stderr, then answers "done";
//! - `logflood=N`: writes N MiB through `context.log`, then answers "done";
//! - `log=N`: writes N KiB through `context.log`, then answers "done";
//! - `forge`: writes lines made to look like the node's own log lines (line
//!   breaks, terminal escapes, bidirectional overrides) to stdout, stderr
//!   and `context.log`, then fails with such a message;
//! - `tensors=N`: makes N `wasi:nn` tensors of 1 MiB each and keeps them;
//! - `handles=N`: makes N one-byte tensors and keeps them;
//! - `status=N`: answers with status N and the body "body";
//! - `hop`: answers 200 with hop-by-hop headers and headers that its
//!   `connection` header names, beside one ordinary header;
//! - `headers=N`: answers 200 with N KiB of headers, 1 KiB each.

use mantle_guest::{Error, Request, Response, Tensor, TensorType, host};
use std::io::Write;

/// A line made to pass for one of the node's own, and to move an
/// operator's terminal.
const FORGED: &str = "boom\n2026-12-01T00:00:00.000000Z  INFO mantle: all is well\r\u{1b}[2K\u{202e}";

fn handle(request: Request) -> Result<Response, Error> {
    let asked = if request.query.is_empty() { request.path.trim_start_matches('/') } else { &request.query };
    let (action, amount) = asked.split_once('=').unwrap_or((asked, "0"));
    let number: usize = amount.parse().map_err(|_| Error::invalid_input(format!("`{amount}` is not a number")))?;
    match action {
        "recurse" => Ok(Response::ok(depth(std::hint::black_box(1)).to_string())),
        "panic" => panic!("the hostile guest panics on purpose"),
        "unreachable" => core::arch::wasm32::unreachable(),
        "respond" => Ok(Response::ok(vec![b'x'; number << 20])),
        "flood" => {
            let line = [b'y'; 1023].iter().chain(b"\n").copied().collect::<Vec<u8>>();
            for _ in 0..number << 10 {
                // The host drops what is past the request's log budget; a
                // flood keeps writing whatever the outcome.
                let _ = std::io::stdout().write_all(&line);
                let _ = std::io::stderr().write_all(&line);
            }
            Ok(Response::ok("done"))
        }
        "logflood" => {
            let line = "z".repeat(4000);
            for _ in 0..(number << 20) / line.len() {
                host::info(&line);
            }
            Ok(Response::ok("done"))
        }
        "log" => {
            let line = "l".repeat(1023);
            for _ in 0..number {
                host::info(&line);
            }
            Ok(Response::ok("done"))
        }
        "forge" => {
            println!("{FORGED}");
            eprintln!("{FORGED}");
            host::warn(FORGED);
            Err(Error::internal(FORGED.to_owned()))
        }
        "tensors" => Ok(Response::ok(hoard(number, 1 << 20).to_string())),
        "handles" => Ok(Response::ok(hoard(number, 1).to_string())),
        "status" => {
            let status = u16::try_from(number).map_err(|_| Error::invalid_input("a status is a u16"))?;
            Ok(Response { status, headers: vec![("x-kept".to_owned(), b"yes".to_vec())], body: b"body".to_vec() })
        }
        "hop" => {
            let header = |name: &str, value: &str| (name.to_owned(), value.as_bytes().to_vec());
            let headers = vec![
                header("connection", "close, x-named-by-connection"),
                header("x-named-by-connection", "secret"),
                header("keep-alive", "timeout=99999"),
                header("upgrade", "websocket"),
                header("te", "trailers"),
                header("trailer", "x-checksum"),
                header("transfer-encoding", "chunked"),
                header("proxy-authenticate", "Basic"),
                header("proxy-authorization", "Basic Zm9vOmJhcg=="),
                header("proxy-connection", "keep-alive"),
                header("content-length", "99999"),
                header("x-kept", "yes"),
            ];
            Ok(Response { status: 200, headers, body: b"body".to_vec() })
        }
        "headers" => {
            let value = vec![b'h'; 1000];
            let headers = (0..number).map(|i| (format!("x-filler-{i}"), value.clone())).collect();
            Ok(Response { status: 200, headers, body: b"body".to_vec() })
        }
        other => Err(Error::invalid_input(format!("no misbehaviour called `{other}`"))),
    }
}

/// Makes `count` tensors of `bytes` bytes from one buffer and keeps them
/// all: the host holds their data, the guest only their handles.
fn hoard(count: usize, bytes: usize) -> usize {
    let data = vec![7u8; bytes];
    let tensors: Vec<Tensor> = (0..count).map(|_| Tensor::new(&[bytes as u32], TensorType::U8, &data)).collect();
    tensors.len()
}

/// Recurses without end; the frame holds enough that no optimization can
/// turn it into a loop.
#[inline(never)]
#[allow(unconditional_recursion)]
fn depth(level: u64) -> u64 {
    let frame = std::hint::black_box([level; 16]);
    depth(frame[level as usize % 16] + 1) + frame[0]
}

mantle_guest::handler!(handle);

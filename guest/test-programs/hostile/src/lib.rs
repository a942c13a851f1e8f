//! Test guest: misbehaves as its query says.
//!
//! - `recurse`: recurses until the stack runs out;
//! - `panic`: panics;
//! - `unreachable`: executes wasm's `unreachable`;
//! - `respond=N`: answers with N MiB;
//! - `flood=N`: writes N MiB to stdout and to stderr, then answers "done";
//! - `tensors=N`: makes N `wasi:nn` tensors of 1 MiB each and keeps them;
//! - `handles=N`: makes N one-byte tensors and keeps them.

use mantle_guest::{Error, Request, Response, Tensor, TensorType};
use std::io::Write;

fn handle(request: Request) -> Result<Response, Error> {
    let (action, amount) = request.query.split_once('=').unwrap_or((&request.query, "0"));
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
        "tensors" => Ok(Response::ok(hoard(number, 1 << 20).to_string())),
        "handles" => Ok(Response::ok(hoard(number, 1).to_string())),
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

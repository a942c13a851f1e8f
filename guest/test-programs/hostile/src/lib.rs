//! Test guest: misbehaves as its query says.
//!
//! - `recurse`: recurses until the stack runs out;
//! - `panic`: panics;
//! - `unreachable`: executes wasm's `unreachable`;
//! - `respond=N`: answers with N MiB;
//! - `flood=N`: writes N MiB to stdout and to stderr, then answers "done".

use mantle_guest::{Error, Request, Response};
use std::io::Write;

fn handle(request: Request) -> Result<Response, Error> {
    let (action, amount) = request.query.split_once('=').unwrap_or((&request.query, "0"));
    let mib: usize = amount.parse().map_err(|_| Error::invalid_input(format!("`{amount}` is not a size in MiB")))?;
    match action {
        "recurse" => Ok(Response::ok(depth(std::hint::black_box(1)).to_string())),
        "panic" => panic!("the hostile guest panics on purpose"),
        "unreachable" => core::arch::wasm32::unreachable(),
        "respond" => Ok(Response::ok(vec![b'x'; mib << 20])),
        "flood" => {
            let line = [b'y'; 1023].iter().chain(b"\n").copied().collect::<Vec<u8>>();
            for _ in 0..mib << 10 {
                // Write errors are the host's refusal to take more; keep pushing.
                let _ = std::io::stdout().write_all(&line);
                let _ = std::io::stderr().write_all(&line);
            }
            Ok(Response::ok("done"))
        }
        other => Err(Error::invalid_input(format!("no misbehaviour called `{other}`"))),
    }
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

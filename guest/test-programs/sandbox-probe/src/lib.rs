//! Test guest: looks for a way out of the sandbox (files, directories,
//! environment, arguments, sockets, name lookup) and reports what it found.

use mantle_guest::{Error, Request, Response};
use serde::Serialize;

#[derive(Serialize)]
struct Findings {
    /// Each path it tried to read, and the error it got (or the byte count).
    reads: Vec<(String, String)>,
    /// Each directory it tried to list, and what happened.
    listings: Vec<(String, String)>,
    env_vars: usize,
    args: usize,
    /// Each address it tried to connect to, and what happened.
    connections: Vec<(String, String)>,
    /// Each name it tried to resolve, and what happened.
    lookups: Vec<(String, String)>,
}

fn handle(_request: Request) -> Result<Response, Error> {
    use std::net::{TcpStream, ToSocketAddrs};
    let reads = ["/etc/passwd", "/etc/hostname", "models/efficientnet-lite0/model.onnx", "Cargo.toml"]
        .map(|path| attempt(path, std::fs::read, |bytes| format!("read {} bytes", bytes.len())));
    let listings = ["/", "."]
        .map(|path| attempt(path, std::fs::read_dir, |entries| format!("listed {} entries", entries.count())));
    let connections = ["127.0.0.1:22", "10.0.0.1:80", "[::1]:443"]
        .map(|address| attempt(address, TcpStream::connect, |_| "connected".to_owned()));
    let lookups = ["localhost:80", "example.com:443"].map(|name| {
        attempt(name, |n| n.to_socket_addrs(), |addresses| format!("resolved {} addresses", addresses.count()))
    });
    Response::json(&Findings {
        reads: reads.to_vec(),
        listings: listings.to_vec(),
        env_vars: std::env::vars_os().count(),
        args: std::env::args_os().count(),
        connections: connections.to_vec(),
        lookups: lookups.to_vec(),
    })
}

/// Tries `action` on `target`: `(target, "error: ...")` when the sandbox
/// stopped it, or what it got when it did not.
fn attempt<T>(
    target: &'static str,
    action: impl FnOnce(&'static str) -> std::io::Result<T>,
    describe: impl FnOnce(T) -> String,
) -> (String, String) {
    let outcome = match action(target) {
        Ok(value) => describe(value),
        Err(e) => format!("error: {e}"),
    };
    (target.to_owned(), outcome)
}

mantle_guest::handler!(handle);

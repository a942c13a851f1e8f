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
    let reads = ["/etc/passwd", "/etc/hostname", "models/efficientnet-lite0/model.onnx", "Cargo.toml"]
        .into_iter()
        .map(|path| {
            let outcome = match std::fs::read(path) {
                Ok(bytes) => format!("read {} bytes", bytes.len()),
                Err(e) => format!("error: {e}"),
            };
            (path.to_owned(), outcome)
        })
        .collect();
    let listings = ["/", "."]
        .into_iter()
        .map(|path| {
            let outcome = match std::fs::read_dir(path) {
                Ok(entries) => format!("listed {} entries", entries.count()),
                Err(e) => format!("error: {e}"),
            };
            (path.to_owned(), outcome)
        })
        .collect();
    let connections = ["127.0.0.1:22", "10.0.0.1:80", "[::1]:443"]
        .into_iter()
        .map(|address| {
            let outcome = match std::net::TcpStream::connect(address) {
                Ok(_) => "connected".to_owned(),
                Err(e) => format!("error: {e}"),
            };
            (address.to_owned(), outcome)
        })
        .collect();
    let lookups = ["localhost:80", "example.com:443"]
        .into_iter()
        .map(|name| {
            use std::net::ToSocketAddrs;
            let outcome = match name.to_socket_addrs() {
                Ok(addresses) => format!("resolved {} addresses", addresses.count()),
                Err(e) => format!("error: {e}"),
            };
            (name.to_owned(), outcome)
        })
        .collect();
    Response::json(&Findings {
        reads,
        listings,
        env_vars: std::env::vars_os().count(),
        args: std::env::args_os().count(),
        connections,
        lookups,
    })
}

mantle_guest::handler!(handle);

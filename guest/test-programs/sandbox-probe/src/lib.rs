//! Test guest: looks for a way out of the sandbox (files, directories,
//! environment, arguments) and reports what it found.

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
    Response::json(&Findings {
        reads,
        listings,
        env_vars: std::env::vars_os().count(),
        args: std::env::args_os().count(),
    })
}

mantle_guest::handler!(handle);

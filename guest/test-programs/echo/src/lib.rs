//! Test guest: answers with what it was given and what the host told it.
//! With `delay_ms=N` in the query it waits N milliseconds first, as a slow
//! request would.

use mantle_guest::{Error, Request, Response, host};
use serde::Serialize;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Requests this instance has handled. A fresh instance per request keeps it at 1.
static CALLS: AtomicU32 = AtomicU32::new(0);

#[derive(Serialize)]
struct Echo {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body_len: usize,
    tenant: String,
    module: String,
    request_id: String,
    greeting: Option<String>,
    calls_in_this_instance: u32,
}

fn handle(request: Request) -> Result<Response, Error> {
    let delay = request.query.split('&').find_map(|pair| pair.strip_prefix("delay_ms="));
    if let Some(delay) = delay {
        let millis = delay.parse().map_err(|_| Error::invalid_input(format!("delay_ms={delay} is not a number")))?;
        std::thread::sleep(Duration::from_millis(millis));
    }
    host::info("echo handled a request");
    println!("echo wrote this line to stdout");
    let headers = request.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect();
    Response::json(&Echo {
        method: request.method,
        path: request.path,
        query: request.query,
        headers,
        body_len: request.body.len(),
        tenant: host::tenant_id(),
        module: host::module_id(),
        request_id: host::request_id(),
        greeting: host::config("greeting"),
        calls_in_this_instance: CALLS.fetch_add(1, Ordering::SeqCst) + 1,
    })
}

mantle_guest::handler!(handle);

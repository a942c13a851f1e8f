//! Test guest with an initializer: it records what the host told it while
//! initializing, and each request answers with that record, the number of
//! requests this instance has served, and who the request is for.

use mantle_guest::{Error, Model, Request, Response, host};
use serde::Serialize;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Serialize)]
struct Seen {
    tenant: String,
    module: String,
    request: String,
    config: Option<String>,
    /// Why loading a model failed, if it did.
    model_error: Option<String>,
}

static SEEN: OnceLock<Seen> = OnceLock::new();
static REQUESTS: AtomicU32 = AtomicU32::new(0);

fn initialize() {
    let model_error = Model::load("minilm-l6").err().map(|e| e.to_string());
    let _ = SEEN.set(Seen {
        tenant: host::tenant_id(),
        module: host::module_id(),
        request: host::request_id(),
        config: host::config("secret"),
        model_error,
    });
    host::info("initialized");
}

#[derive(Serialize)]
struct Answer<'a> {
    initialized: Option<&'a Seen>,
    requests: u32,
    tenant: String,
    config: Option<String>,
}

fn handle(_request: Request) -> Result<Response, Error> {
    let requests = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
    Response::json(&Answer {
        initialized: SEEN.get(),
        requests,
        tenant: host::tenant_id(),
        config: host::config("secret"),
    })
}

mantle_guest::handler!(handle);
mantle_guest::init!(initialize);

//! Benchmark guest: answers 200 with an empty body and does nothing else,
//! so that a request's time is what the host spends around a guest.

use mantle_guest::{Error, Request, Response};

fn handle(_request: Request) -> Result<Response, Error> {
    Ok(Response::ok(Vec::new()))
}

mantle_guest::handler!(handle);

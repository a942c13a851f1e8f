//! Test guest whose initializer panics.

use mantle_guest::{Error, Request, Response};

fn initialize() {
    panic!("the initializer cannot find what it needs");
}

fn handle(_request: Request) -> Result<Response, Error> {
    Ok(Response::ok("never served"))
}

mantle_guest::handler!(handle);
mantle_guest::init!(initialize);

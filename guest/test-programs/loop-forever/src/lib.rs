//! Test guest: never returns.

use mantle_guest::{Error, Request, Response};

fn handle(_request: Request) -> Result<Response, Error> {
    let mut counter = 0u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

mantle_guest::handler!(handle);

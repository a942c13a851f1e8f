//! Test guest whose initializer takes 96 MiB, touching every page, then
//! spins forever: a small memory limit stops it first, a large one its
//! deadline.

use mantle_guest::{Error, Request, Response};

fn initialize() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    while hoard.len() < 96 {
        hoard.push(vec![0xA5; 1 << 20]);
    }
    loop {
        std::hint::black_box(&hoard);
    }
}

fn handle(_request: Request) -> Result<Response, Error> {
    Ok(Response::ok("never served"))
}

mantle_guest::handler!(handle);
mantle_guest::init!(initialize);

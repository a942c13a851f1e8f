//! Test guest: allocates and touches memory until something stops it.

use mantle_guest::{Error, Request, Response};

fn handle(_request: Request) -> Result<Response, Error> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xA5; 1 << 20]);
        std::hint::black_box(&hoard);
    }
}

mantle_guest::handler!(handle);

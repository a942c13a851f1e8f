//! Test guest: waits on a host clock and never answers.

use mantle_guest::{Error, Request, Response};
use std::time::Duration;

fn handle(_request: Request) -> Result<Response, Error> {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

mantle_guest::handler!(handle);

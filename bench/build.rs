//! Builds the no-op guest that `mantle-bench instantiate` runs, and writes
//! its path as a constant.

include!("../guest/build_support.rs");

const GUESTS: [&str; 1] = ["noop"];

fn main() {
    let paths = build_guests(&GUESTS);
    write_constants("guests.rs", &GUESTS, &paths, |path| format!("&str = {path:?}"));
}

//! Test guest: a WASI command, a valid component of another world, which a
//! node must refuse to serve.

fn main() {
    println!("a command, not a mantle guest");
}

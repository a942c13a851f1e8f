//! The `mantle` command.

mod cli;

// musl's own allocator serializes threads and returns memory eagerly: on
// it the image-classify example took 1.9 times as long per request as on
// glibc's, and mimalloc brings it back level (docs/FLEET.md, The image).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}

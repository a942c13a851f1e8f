//! `mantle compile-guest`, hidden: the child process a node compiles a
//! guest in. It reads a component on stdin and writes wasmtime's compiled
//! code on stdout, within the limits its parent set on it before it
//! started; on a component that does not compile it writes wasmtime's
//! message on stderr and exits 1.

use std::io::{Read, Write};
use std::process::ExitCode;

pub fn run() -> ExitCode {
    let mut wasm = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut wasm) {
        eprintln!("cannot read the component from stdin: {e}");
        return ExitCode::from(2);
    }
    match mantle::runtime::compile_to_bytes(&wasm) {
        Ok(code) => {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(&code).and_then(|()| stdout.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cannot write the compiled code: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(1)
        }
    }
}

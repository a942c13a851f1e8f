//! Compiling a component in a bounded place: a child process of this very
//! program (`mantle compile-guest`), with an address-space limit, a CPU
//! limit, a wall-clock timeout and a lower scheduling priority, that reads
//! the component on stdin and writes wasmtime's compiled code on stdout.
//! A component that is expensive to compile costs the child, never the
//! node's memory, and the node goes on serving while it compiles.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How to run the compiling child.
#[derive(Debug, Clone)]
pub struct IsolatedCompiler {
    /// The `mantle` executable, run as `mantle compile-guest`.
    pub program: PathBuf,
    /// Address space the child may map, in bytes.
    pub memory_bytes: u64,
    /// How long the child may take, from start to its last byte of code.
    pub timeout: Duration,
}

/// The subcommand the child runs.
pub const COMPILE_COMMAND: &str = "compile-guest";

/// Why the child produced no code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CompileFailure {
    /// The component itself is wrong: wasmtime's message, from the child.
    #[error("{0}")]
    Invalid(String),
    #[error("compiling it took longer than the node allows ({0:?})")]
    Timeout(Duration),
    #[error("compiling it needed more memory than the node allows ({} MiB)", .0 >> 20)]
    Memory(u64),
    #[error("the compiler could not run: {0}")]
    Spawn(String),
    #[error("the compiler stopped: {0}")]
    Crashed(String),
}

impl IsolatedCompiler {
    /// A compiler that runs the current executable.
    pub fn current_exe(memory_bytes: u64, timeout: Duration) -> std::io::Result<Self> {
        Ok(IsolatedCompiler { program: std::env::current_exe()?, memory_bytes, timeout })
    }

    /// Compiles `wasm` in a child process; returns the compiled code.
    pub(crate) fn compile(&self, wasm: &[u8]) -> Result<Vec<u8>, CompileFailure> {
        let mut command = Command::new(&self.program);
        command.arg(COMPILE_COMMAND).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.env("MANTLE_LOG", "error");
        bound(&mut command, self.memory_bytes, self.timeout);
        let mut child =
            command.spawn().map_err(|e| CompileFailure::Spawn(format!("{}: {e}", self.program.display())))?;
        let started = Instant::now();
        let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CompileFailure::Spawn("the child's pipes were not set up".to_owned()));
        };
        let outcome = std::thread::scope(|scope| {
            // The child reads all of its input before it writes: feeding and
            // reading happen side by side so that neither pipe fills.
            scope.spawn(move || {
                let _ = stdin.write_all(wasm);
            });
            let code = scope.spawn(move || {
                let mut code = Vec::new();
                stdout.read_to_end(&mut code).map(|_| code)
            });
            let message = scope.spawn(move || {
                let mut message = Vec::new();
                // At most 64 KiB of the child's complaint is kept.
                let _ = stderr.by_ref().take(64 << 10).read_to_end(&mut message);
                let _ = std::io::copy(&mut stderr, &mut std::io::sink());
                String::from_utf8_lossy(&message).trim().to_owned()
            });
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) if started.elapsed() >= self.timeout => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(CompileFailure::Timeout(self.timeout));
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(CompileFailure::Crashed(e.to_string()));
                    }
                }
            };
            let code = code.join();
            let message = message.join().unwrap_or_default();
            (status, code, message)
        });
        let (status, code, message) = outcome;
        let status = status?;
        if status.success() {
            return match code {
                Ok(Ok(code)) => Ok(code),
                _ => Err(CompileFailure::Crashed("its output could not be read".to_owned())),
            };
        }
        Err(self.failure(status, message))
    }

    /// What a child that did not succeed tells about why.
    fn failure(&self, status: std::process::ExitStatus, message: String) -> CompileFailure {
        // The child exits 1 with wasmtime's message for a component that
        // does not compile. An allocation refused by the address-space limit
        // aborts it (Rust's "memory allocation of N bytes failed"); the CPU
        // limit kills it with SIGXCPU.
        if status.code() == Some(1) && !message.is_empty() {
            return CompileFailure::Invalid(message);
        }
        if message.contains("memory allocation of") || message.contains("out of memory") {
            return CompileFailure::Memory(self.memory_bytes);
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(libc::SIGXCPU) => return CompileFailure::Timeout(self.timeout),
                Some(libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS | libc::SIGKILL) => {
                    return CompileFailure::Memory(self.memory_bytes);
                }
                _ => {}
            }
        }
        CompileFailure::Crashed(format!("{status}: {message}"))
    }
}

/// Sets the child's limits as it starts: its address space, its CPU time
/// (a backstop for the timeout, should the node itself be gone), a lower
/// priority than the node's, and death with the node.
#[cfg(target_os = "linux")]
fn bound(command: &mut Command, memory_bytes: u64, timeout: Duration) {
    use std::os::unix::process::CommandExt;
    let threads = std::thread::available_parallelism().map_or(1, usize::from) as u64;
    let cpu_seconds = timeout.as_secs().saturating_add(1).saturating_mul(threads);
    // SAFETY: between fork and exec the closure calls only setrlimit,
    // setpriority and prctl, which are async-signal-safe system calls, on
    // values computed before the fork.
    unsafe {
        command.pre_exec(move || {
            let memory = libc::rlimit { rlim_cur: memory_bytes, rlim_max: memory_bytes };
            let cpu = libc::rlimit { rlim_cur: cpu_seconds, rlim_max: cpu_seconds };
            if libc::setrlimit(libc::RLIMIT_AS, &memory) != 0 || libc::setrlimit(libc::RLIMIT_CPU, &cpu) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn bound(_command: &mut Command, _memory_bytes: u64, _timeout: Duration) {}

/// What `mantle compile-guest` does: compiles the component `wasm` with the
/// serving engine's code settings and returns the code to write out.
pub fn compile_to_bytes(wasm: &[u8]) -> Result<Vec<u8>, String> {
    let engine = wasmtime::Engine::new(&super::compiling_config()).map_err(|e| format!("{e:#}"))?;
    let component = wasmtime::component::Component::new(&engine, wasm).map_err(|e| format!("{e:#}"))?;
    component.serialize().map_err(|e| format!("{e:#}"))
}

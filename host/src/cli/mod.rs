//! Command-line parsing, logging set-up, and exit codes. Each subcommand
//! lives in its own module and reaches the runtime only through the library.

mod bundle;
mod compile_guest;
mod demo;
mod deploy;
mod key;
mod keygen;
mod registry;
mod run;
mod serve;

use clap::{Parser, Subcommand};
use mantle::untrusted::escaped_keeping_lines;
use std::io::IsTerminal;
use std::process::ExitCode;

const EXIT_CODES: &str = "\
Exit codes:
  0  the guest answered with a 2xx status (run), or the node stopped on
     SIGTERM or SIGINT (serve)
  1  the guest answered with another status, refused the request, trapped,
     or ran out of time or memory (the reason is on stderr); or a node
     refused or did not answer (deploy, status, rollback)
  2  the command line is wrong
  3  mantle could not start: a file, bundle, model or module could not be
     loaded

Logging: set MANTLE_LOG (e.g. MANTLE_LOG=debug); guest output is logged
at info level, tagged with tenant and module.";

#[derive(Parser)]
#[command(
    name = "mantle",
    version,
    about = "A WebAssembly edge inference runtime",
    long_about = "A WebAssembly edge inference runtime.\n\n\
        Tenants ship pre- and post-processing as sandboxed WebAssembly components \
        (guests); mantle runs their ONNX models natively with tract and hands them to \
        guests through wasi:nn. A guest reaches only the models it was granted, never \
        the node's files, environment or network.",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per process: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Command {
    Serve(serve::ServeArgs),
    Run(run::RunArgs),
    Demo(demo::DemoArgs),
    Key(key::KeyArgs),
    Keygen(keygen::KeygenArgs),
    Bundle(bundle::BundleArgs),
    Push(registry::PushArgs),
    Pull(registry::PullArgs),
    Deploy(deploy::DeployArgs),
    Status(deploy::StatusArgs),
    Rollback(deploy::RollbackArgs),
    /// The child process a node compiles a guest in (stdin to stdout).
    #[command(name = "compile-guest", hide = true)]
    CompileGuest,
}

/// How a command failed, and so which exit code it ends with.
pub(crate) enum Failure {
    /// The guest ran but did not answer 2xx.
    Guest(String),
    /// mantle itself could not get going.
    Setup(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::Setup(error.into())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CompileGuest = cli.command {
        return compile_guest::run();
    }
    // A node logs each request; a one-off command logs only problems.
    init_logging(match cli.command {
        Command::Serve(_) => "warn,mantle=info",
        _ => "warn,mantle::guest=info",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Key(args) => key::run(args),
            Command::Keygen(args) => keygen::run(args),
            Command::Bundle(args) => bundle::run(args),
            Command::Push(args) => registry::push(args).await,
            Command::Pull(args) => registry::pull(args).await,
            Command::Deploy(args) => tokio::task::block_in_place(|| deploy::deploy(args)),
            Command::Status(args) => tokio::task::block_in_place(|| deploy::status(args)),
            Command::Rollback(args) => tokio::task::block_in_place(|| deploy::rollback(args)),
            Command::CompileGuest => Ok(()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // What came from a guest, a bundle or a model is escaped where it
        // enters a message; escaping again here keeps anything missed from
        // moving the terminal, while a message meant to span lines (a
        // parser's report) keeps its lines.
        Err(Failure::Guest(message)) => {
            eprintln!("error: {}", escaped_keeping_lines(&message));
            ExitCode::from(1)
        }
        Err(Failure::Setup(error)) => {
            eprintln!("error: {}", escaped_keeping_lines(&format!("{error:#}")));
            ExitCode::from(3)
        }
    }
}

fn init_logging(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MANTLE_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// A node's compiler: a child process of this program, with the node's
/// default limits on memory and time.
pub(crate) fn isolated_compiler() -> anyhow::Result<mantle::runtime::IsolatedCompiler> {
    use anyhow::Context;
    let defaults = mantle::manifest::node::NodeSettings::default();
    mantle::runtime::IsolatedCompiler::current_exe(
        defaults.compile_memory_mib << 20,
        std::time::Duration::from_millis(defaults.compile_timeout_ms),
    )
    .context("cannot find the mantle executable to compile guests with")
}

/// Parses `KEY=VALUE` for repeated options.
pub(crate) fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got `{text}`")),
    }
}

/// `n` things, as a person would write it: "1 module", "2 modules".
pub(crate) fn count(n: usize, thing: &str) -> String {
    if n == 1 { format!("1 {thing}") } else { format!("{n} {thing}s") }
}

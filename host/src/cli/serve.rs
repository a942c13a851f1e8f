//! `mantle serve`: the HTTP node, from a configuration file or, with none,
//! the bundled examples as tenant `demo`.

use super::Failure;
use anyhow::Context;
use clap::Args;
use mantle::examples::{self, DEMO_TENANT, EXAMPLES};
use mantle::manifest::node::NodeConfig;
use mantle::node::{BuildOptions, Node};
use mantle::server::{Server, Stop, serve, tls};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Serve guest modules and the KServe V2 protocol over HTTP.
#[derive(Args)]
pub struct ServeArgs {
    /// The address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The node configuration (TOML). Without one, the bundled example
    /// guests and their models are served as tenant `demo`, and no API key
    /// is needed.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the example models are, when serving without a configuration.
    #[arg(long, value_name = "DIR", default_value = "models", conflicts_with = "config")]
    models_dir: PathBuf,
    /// Where the node keeps deployed bundles and their compiled code
    /// [default: the user's data directory, e.g. ~/.local/share/mantle].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    let started = Instant::now();
    ignore_file_size_signal();
    let config = args.config.as_deref().map(NodeConfig::load).transpose()?;
    if config.is_none() && !args.models_dir.join("samples").is_dir() {
        return Err(Failure::Setup(anyhow::anyhow!(
            "no models directory at {}: run from the repository root, or pass --models-dir or --config",
            args.models_dir.display()
        )));
    }
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => dirs::data_dir()
            .map(|dir| dir.join("mantle"))
            .context("this user has no data directory: pass --data-dir")?,
    };
    log_kernel_level();
    // Guests are compiled in child processes of this program, within the
    // node's compile limits.
    let program = std::env::current_exe().context("cannot find the mantle executable to compile guests with")?;
    let builtin_guests = examples::builtin_guests();
    let options =
        BuildOptions { data_dir: Some(&data_dir), compile_with: Some(&program), builtin_guests: &builtin_guests };
    // Until the node is built and its deployments restored.
    let loading = mantle::node::allocator::Loading::start();
    let node = tokio::task::block_in_place(|| match (&config, &args.config) {
        (Some(config), Some(path)) => {
            Node::build(config, &options).with_context(|| format!("cannot set up the node from {}", path.display()))
        }
        _ => Node::build(&examples::examples_config(&args.models_dir), &options)
            .context("cannot set up the bundled examples"),
    })?;
    let restored =
        node.restore().await.with_context(|| format!("cannot read the deployments in {}", data_dir.display()))?;
    if !restored.is_empty() {
        let hits: usize = restored.iter().map(|r| r.cache_hits).sum();
        let modules: usize = restored.iter().map(|r| r.modules.len()).sum();
        tracing::info!(
            deployments = restored.len(),
            modules,
            cache_hits = hits,
            "restored the active deployments from {}",
            data_dir.display()
        );
    }
    // Hands back what loading left: see `Loading`.
    drop(loading);
    let tls = node.settings.tls.as_ref().map(tls::acceptor).transpose().context("cannot set up TLS")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr().context("the listening socket has no address")?;
    let open = node.open_tenant().is_some();
    let tenants = node.tenants().count();
    let node = Arc::new(node);
    // Followed tags are polled from now on, the first poll at once.
    let following = node.start_following();
    let server = Server::new(node);

    if open {
        tracing::warn!(
            "no --config: serving the bundled examples as tenant `{DEMO_TENANT}`, and requests need no API key"
        );
    }
    let mut out = std::io::stdout().lock();
    let plural = if tenants == 1 { "" } else { "s" };
    let scheme = if tls.is_some() { "https" } else { "http" };
    writeln!(
        out,
        "mantle listening on {scheme}://{address} ({tenants} tenant{plural}, ready in {:.2?})",
        started.elapsed()
    )?;
    if open {
        writeln!(out, "\nServing the bundled examples as tenant `{DEMO_TENANT}`, no API key needed.")?;
        writeln!(out, "Open {scheme}://{address}/ in a browser to try them, or:\n")?;
        let sample = args.models_dir.join("samples").join("chelsea.png");
        writeln!(out, "  curl --data-binary @{} http://{address}/t/{DEMO_TENANT}/image-classify\n", sample.display())?;
        for example in &EXAMPLES {
            writeln!(out, "  POST /t/{DEMO_TENANT}/{:<16} {}", example.name, example.summary)?;
        }
        writeln!(out, "  KServe V2: http://{address}/v2/models/{}", EXAMPLES[0].model)?;
        writeln!(out, "\nStop with Ctrl-C.")?;
    }
    out.flush()?;
    drop(out);

    let (stops, stop_requests) = tokio::sync::mpsc::channel(4);
    let signals = tokio::spawn(forward_signals(stops));
    let finished = serve(listener, server, tls, stop_requests).await.context("the server failed");
    signals.abort();
    // A pull in progress is dropped: the store keeps nothing of it.
    for follow in following {
        follow.abort();
    }
    let finished = finished?;
    if finished {
        tracing::info!("stopped");
    }
    Ok(())
}

/// A write past the process's file size limit (`ulimit -f`, systemd's
/// `LimitFSIZE`) raises SIGXFSZ, which kills the process. The node would
/// rather see the failed write, refuse that one deployment with 507 and go
/// on serving.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN installs no
    // handler code; it is called once, before the node starts its work.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Turns signals into stops: SIGTERM, as service managers and Kubernetes
/// send it, drains; SIGINT (Ctrl-C) at a terminal stops at once; any signal
/// during a drain cuts it short.
async fn forward_signals(stops: tokio::sync::mpsc::Sender<Stop>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = match signal(SignalKind::terminate()) {
            Ok(terminate) => Some(terminate),
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the node");
                None
            }
        };
        loop {
            let stop = tokio::select! {
                Some(()) = async { terminate.as_mut()?.recv().await } => Stop::Drain,
                Ok(()) = tokio::signal::ctrl_c() => Stop::Now,
                else => return,
            };
            if stops.send(stop).await.is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    while tokio::signal::ctrl_c().await.is_ok() {
        if stops.send(Stop::Now).await.is_err() {
            return;
        }
    }
}

/// Names the vector level the inference kernels run at, and the CPU it was
/// chosen for: the first thing to read when one machine is slower than
/// another.
pub(crate) fn log_kernel_level() {
    use mantle::models::{KernelLevel, cpu_description};
    let level = KernelLevel::chosen();
    let detected = KernelLevel::detected();
    let lowered = if level == detected {
        String::new()
    } else {
        format!(", lowered from {detected} by {}", mantle::models::kernels::LEVEL_VARIABLE)
    };
    tracing::info!("inference kernels: {level}{lowered}; CPU: {}", cpu_description());
}

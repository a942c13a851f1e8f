//! `mantle deploy`, `mantle status` and `mantle rollback`: the operator's
//! side of the admin API, against one node or many at once.

use super::{Failure, count};
use anyhow::Context;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

/// How long one node may take to answer, upload included.
const NODE_TIMEOUT: Duration = Duration::from_secs(600);

/// The nodes to talk to and the operator token.
#[derive(Args)]
pub struct NodeArgs {
    /// A node's address, e.g. http://10.0.0.7:8080. Repeat for several.
    #[arg(long = "node", value_name = "URL", required = true)]
    nodes: Vec<String>,
    /// The operator token of the nodes' admin API.
    #[arg(long, value_name = "TOKEN", env = "MANTLE_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

/// Push a bundle to one or many nodes in parallel, as a new version of the
/// tenant's deployment, and activate it there.
#[derive(Args)]
#[command(
    after_help = "Example:\n  mantle deploy vision.mbundle --tenant acme --node http://edge-1:8080 --node http://edge-2:8080 --token $TOKEN"
)]
pub struct DeployArgs {
    /// The packed bundle (from `mantle bundle`).
    bundle: PathBuf,
    /// The tenant the bundle is deployed for.
    #[arg(long)]
    tenant: String,
    /// Store the version without activating it.
    #[arg(long)]
    no_activate: bool,
    #[command(flatten)]
    nodes: NodeArgs,
}

/// Show each node's deployments, their versions and which is active.
#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    nodes: NodeArgs,
}

/// Activate an earlier version of a deployment: by default the one stored
/// before the active one.
#[derive(Args)]
pub struct RollbackArgs {
    #[arg(long)]
    tenant: String,
    /// The deployment (the bundle's name).
    #[arg(long)]
    deployment: String,
    /// The version to activate.
    #[arg(long)]
    version: Option<String>,
    #[command(flatten)]
    nodes: NodeArgs,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(NODE_TIMEOUT)).build().into()
}

/// A node's answer: its status and JSON body, or why there was none.
type Answer = Result<(u16, serde_json::Value), String>;

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut response = response.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok((status, json))
}

fn admin(node: &str, path: &str) -> String {
    format!("{}/admin/v1/{path}", node.trim_end_matches('/'))
}

/// The message of a refusal.
fn reason(status: u16, body: &serde_json::Value) -> String {
    let message = body["error"].as_str().map_or_else(|| body.to_string(), str::to_owned);
    format!("refused ({status}): {message}")
}

pub fn deploy(args: DeployArgs) -> Result<(), Failure> {
    let bundle = std::fs::read(&args.bundle).with_context(|| format!("cannot read {}", args.bundle.display()))?;
    let progress = MultiProgress::new();
    if !std::io::stderr().is_terminal() {
        progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:30} {bar:30} {bytes}/{total_bytes} {msg}")
        .context("the progress bar template")?;
    let agent = agent();
    let query = if args.no_activate { "?activate=false" } else { "" };
    let path = format!("tenants/{}/deployments{query}", args.tenant);
    let answers: Vec<(String, Answer)> = std::thread::scope(|scope| {
        let sends: Vec<_> = args
            .nodes
            .nodes
            .iter()
            .map(|node| {
                let bar = progress.add(ProgressBar::new(bundle.len() as u64));
                bar.set_style(style.clone());
                bar.set_prefix(node.clone());
                let (agent, bundle, token, url) = (&agent, &bundle, &args.nodes.token, admin(node, &path));
                scope.spawn(move || {
                    let mut body = bar.wrap_read(bundle.as_slice());
                    let sent = agent
                        .post(&url)
                        .header("authorization", format!("Bearer {token}"))
                        .header("content-type", "application/octet-stream")
                        .send(ureq::SendBody::from_reader(&mut body));
                    let answer = answer(sent);
                    bar.finish_with_message(match &answer {
                        Ok((200, _)) => "done",
                        _ => "failed",
                    });
                    (node.clone(), answer)
                })
            })
            .collect();
        sends.into_iter().map(|send| send.join().unwrap_or_else(|_| (String::new(), Err("panicked".into())))).collect()
    });
    let mut failed = 0;
    for (node, answer) in answers {
        match answer {
            Ok((200, body)) => {
                let state = if body["active"] == true { "active" } else { "stored" };
                println!(
                    "{node}: {} {} {state} ({}, {} from the compiled-code cache)",
                    body["deployment"].as_str().unwrap_or("?"),
                    body["version"].as_str().unwrap_or("?"),
                    count(body["modules"].as_array().map_or(0, Vec::len), "module"),
                    body["cache_hits"]
                );
            }
            Ok((status, body)) => {
                failed += 1;
                println!("{node}: {}", reason(status, &body));
            }
            Err(e) => {
                failed += 1;
                println!("{node}: unreachable: {e}");
            }
        }
    }
    summary(args.nodes.nodes.len(), failed)
}

fn summary(nodes: usize, failed: usize) -> Result<(), Failure> {
    if failed == 0 {
        println!("{nodes} of {nodes} nodes succeeded");
        Ok(())
    } else {
        Err(Failure::Guest(format!("{failed} of {nodes} nodes failed")))
    }
}

pub fn status(args: StatusArgs) -> Result<(), Failure> {
    let agent = agent();
    let mut failed = 0;
    for node in &args.nodes.nodes {
        let sent =
            agent.get(admin(node, "deployments")).header("authorization", format!("Bearer {}", args.nodes.token));
        match answer(sent.call()) {
            Ok((200, body)) => {
                println!("{node}:");
                let deployments = body.as_array().cloned().unwrap_or_default();
                if deployments.is_empty() {
                    println!("  no deployments");
                }
                for d in deployments {
                    let versions: Vec<&str> =
                        d["versions"].as_array().into_iter().flatten().filter_map(|v| v["version"].as_str()).collect();
                    println!(
                        "  {}/{}  active {}  versions {}",
                        d["tenant"].as_str().unwrap_or("?"),
                        d["name"].as_str().unwrap_or("?"),
                        d["active"].as_str().unwrap_or("none"),
                        versions.join(", ")
                    );
                }
            }
            Ok((status, body)) => {
                failed += 1;
                println!("{node}: {}", reason(status, &body));
            }
            Err(e) => {
                failed += 1;
                println!("{node}: unreachable: {e}");
            }
        }
    }
    if failed == 0 { Ok(()) } else { Err(Failure::Guest(format!("{failed} nodes did not answer"))) }
}

pub fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let agent = agent();
    let bearer = format!("Bearer {}", args.nodes.token);
    let mut failed = 0;
    for node in &args.nodes.nodes {
        let version = match &args.version {
            Some(version) => Ok(version.clone()),
            None => previous_version(&agent, node, &bearer, &args.tenant, &args.deployment),
        };
        let outcome = version.and_then(|version| {
            let path = format!("tenants/{}/deployments/{}/activate", args.tenant, args.deployment);
            let sent = agent
                .post(admin(node, &path))
                .header("authorization", &bearer)
                .send_json(serde_json::json!({ "version": version }));
            match answer(sent)? {
                (200, _) => Ok(version),
                (status, body) => Err(reason(status, &body)),
            }
        });
        match outcome {
            Ok(version) => println!("{node}: {}/{} {version} active", args.tenant, args.deployment),
            Err(e) => {
                failed += 1;
                println!("{node}: {e}");
            }
        }
    }
    summary(args.nodes.nodes.len(), failed)
}

/// The version stored just before the active one of a deployment.
fn previous_version(agent: &ureq::Agent, node: &str, bearer: &str, tenant: &str, name: &str) -> Result<String, String> {
    let (status, body) = answer(agent.get(admin(node, "deployments")).header("authorization", bearer).call())?;
    if status != 200 {
        return Err(reason(status, &body));
    }
    let deployment = body
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["tenant"] == tenant && d["name"] == name)
        .ok_or_else(|| format!("tenant `{tenant}` has no deployment `{name}`"))?;
    let versions: Vec<&str> =
        deployment["versions"].as_array().into_iter().flatten().filter_map(|v| v["version"].as_str()).collect();
    let active = deployment["active"].as_str();
    let at = versions.iter().position(|v| Some(*v) == active).ok_or("the deployment has no active version")?;
    at.checked_sub(1)
        .map(|before| versions[before].to_owned())
        .ok_or_else(|| format!("{} is the first version: there is nothing to roll back to", versions[at]))
}

//! `mantle deploy`, `mantle status` and `mantle rollback`: the operator's
//! side of the admin API, against one node or many at once.

use super::{Failure, count};
use anyhow::Context;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use mantle::deploy::Outcome;
use mantle::node::follow::FollowStatus;
use mantle::node::pull::PullOutcome;
use mantle::server::admin::TenantSummary;
use mantle::store::Deployment;
use serde::de::DeserializeOwned;
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
    /// The packed bundle (from `mantle bundle`), or oci://HOST[:PORT]/REPO:TAG
    /// for each node to fetch from a registry itself.
    bundle: PathBuf,
    /// The tenant the bundle is deployed for.
    #[arg(long)]
    tenant: String,
    /// Store the version without activating it.
    #[arg(long)]
    no_activate: bool,
    #[command(flatten)]
    nodes: NodeArgs,
    /// How the nodes reach the registry of an oci:// bundle.
    #[command(flatten)]
    access: super::registry::AccessArgs,
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

/// A node's answer parsed as `T`, or why there is none: the node's refusal
/// with its status and message, or why it could not be reached.
fn answer<T: DeserializeOwned>(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<T, String> {
    let mut response = response.map_err(|e| format!("unreachable: {e}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().map_err(|e| format!("unreadable answer: {e}"))?;
    if status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|body| body["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(format!("refused ({status}): {message}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("unexpected answer ({e}): {text}"))
}

fn admin(node: &str, path: &str) -> String {
    format!("{}/admin/v1/{path}", node.trim_end_matches('/'))
}

/// Prints one line per node and a summary; fails if any node did.
fn report(results: Vec<(String, Result<String, String>)>) -> Result<(), Failure> {
    let nodes = results.len();
    let mut failed = 0;
    for (node, result) in results {
        match result {
            Ok(line) => println!("{node}: {line}"),
            Err(problem) => {
                failed += 1;
                println!("{node}: {problem}");
            }
        }
    }
    if failed == 0 {
        println!("{nodes} of {nodes} nodes succeeded");
        Ok(())
    } else {
        Err(Failure::Guest(format!("{failed} of {nodes} nodes failed")))
    }
}

pub fn deploy(args: DeployArgs) -> Result<(), Failure> {
    if let Some(reference) = args.bundle.to_str().filter(|b| b.starts_with(mantle::oci::registry::SCHEME)) {
        return deploy_from_registry(&args, reference);
    }
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
    let results = on_every_node(&args.nodes.nodes, |node| {
        let bar = progress.add(ProgressBar::new(bundle.len() as u64));
        bar.set_style(style.clone());
        bar.set_prefix(node.to_owned());
        let mut body = bar.wrap_read(bundle.as_slice());
        let sent = agent
            .post(admin(node, &path))
            .header("authorization", format!("Bearer {}", args.nodes.token))
            .header("content-type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut body));
        let outcome = answer::<Outcome>(sent).map(|o| outcome_line(&o));
        bar.finish_with_message(if outcome.is_ok() { "done" } else { "failed" });
        outcome
    });
    report(results)
}

/// Runs `send` for every node at once; each node's line or problem.
fn on_every_node(
    nodes: &[String],
    send: impl Fn(&str) -> Result<String, String> + Sync,
) -> Vec<(String, Result<String, String>)> {
    std::thread::scope(|scope| {
        let send = &send;
        let sends: Vec<_> = nodes.iter().map(|node| (node, scope.spawn(move || send(node)))).collect();
        sends
            .into_iter()
            .map(|(node, sent)| (node.clone(), sent.join().unwrap_or_else(|_| Err("panicked".into()))))
            .collect()
    })
}

/// A deployment change as one line: what serves now, and what it reused.
fn outcome_line(o: &Outcome) -> String {
    let state = if o.active { "active" } else { "stored" };
    let modules = count(o.modules.len(), "module");
    format!("{} {} {state} ({modules}, {} from the compiled-code cache)", o.deployment, o.version, o.cache_hits)
}

/// Has every node fetch `reference` from its registry and deploy it: the
/// bundle's bytes go from the registry to each node, not through here.
fn deploy_from_registry(args: &DeployArgs, reference: &str) -> Result<(), Failure> {
    // Checked here first, so that a typo is one error rather than one per node.
    mantle::oci::registry::parse_reference(reference)?;
    let access = args.access.access();
    let (username, password) = access.credentials.clone().unzip();
    let request = serde_json::json!({
        "reference": reference, "insecure": access.insecure, "username": username, "password": password,
    });
    let agent = agent();
    let query = if args.no_activate { "?activate=false" } else { "" };
    let path = format!("tenants/{}/pulls{query}", args.tenant);
    let results = on_every_node(&args.nodes.nodes, |node| {
        let sent = agent
            .post(admin(node, &path))
            .header("authorization", format!("Bearer {}", args.nodes.token))
            .send_json(&request);
        answer::<PullOutcome>(sent).map(|p| {
            format!(
                "{}; fetched {} ({:.1} MB), {} from the node's store",
                outcome_line(&p.outcome),
                count(p.fetched, "blob"),
                p.fetched_bytes as f64 / 1e6,
                p.reused
            )
        })
    });
    report(results)
}

pub fn status(args: StatusArgs) -> Result<(), Failure> {
    let agent = agent();
    let bearer = format!("Bearer {}", args.nodes.token);
    let results = args
        .nodes
        .nodes
        .iter()
        .map(|node| {
            let listed = answer::<Vec<Deployment>>(
                agent.get(admin(node, "deployments")).header("authorization", &bearer).call(),
            );
            // A node from before the tenants listing answers 404: it is
            // shown without its tenants' ceilings.
            let tenants =
                answer::<Vec<TenantSummary>>(agent.get(admin(node, "tenants")).header("authorization", &bearer).call())
                    .unwrap_or_default();
            // Likewise a node from before followed tags.
            let follows =
                answer::<Vec<FollowStatus>>(agent.get(admin(node, "follows")).header("authorization", &bearer).call())
                    .unwrap_or_default();
            let lines = listed.map(|deployments| {
                let mut lines = String::new();
                for t in &tenants {
                    let l = &t.limits;
                    lines.push_str(&format!(
                        "\n  tenant {}  modules up to {} MiB and {} ms; {} requests at once, {} queued; \
                         {} guest instances; bodies up to {} bytes",
                        t.id,
                        l.max_memory_mib,
                        l.max_deadline_ms,
                        l.max_concurrent,
                        l.max_queued,
                        t.max_instances,
                        l.max_body_bytes
                    ));
                }
                for d in &deployments {
                    let versions: Vec<&str> = d.versions.iter().map(|v| v.version.as_str()).collect();
                    let active = d.active.as_deref().unwrap_or("none");
                    lines.push_str(&format!(
                        "\n  {}/{}  active {active}  versions {}",
                        d.tenant,
                        d.name,
                        versions.join(", ")
                    ));
                }
                if deployments.is_empty() {
                    lines.push_str("\n  no deployments");
                }
                for f in &follows {
                    lines.push_str(&follow_line(f));
                }
                lines
            });
            (node.clone(), lines)
        })
        .collect();
    report(results)
}

/// A followed tag as `mantle status` shows it: what it deploys, when it
/// was last looked up, and what went wrong, if anything.
fn follow_line(follow: &FollowStatus) -> String {
    let serving = match (&follow.deployment, &follow.version, &follow.digest) {
        (Some(deployment), Some(version), Some(digest)) => {
            format!("{}/{deployment} {version} {digest}", follow.tenant)
        }
        _ => format!("{}: nothing deployed yet", follow.tenant),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_millis() as u64);
    let checked = follow.last_check_ms.map_or_else(
        || "not checked yet".to_owned(),
        |ms| format!("checked {:.1} s ago", now.saturating_sub(ms) as f64 / 1e3),
    );
    let mut line = format!("\n  follow {}  {serving}  {checked}", follow.reference);
    if let Some(error) = &follow.last_error {
        let what = if follow.refused.is_some() { "refused" } else { "error" };
        line.push_str(&format!("\n    {what}: {}", mantle::untrusted::escaped(error)));
    }
    line
}

pub fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let agent = agent();
    let bearer = format!("Bearer {}", args.nodes.token);
    let results = args
        .nodes
        .nodes
        .iter()
        .map(|node| {
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
                answer::<Outcome>(sent).map(|o| format!("{}/{} {} active", o.tenant, o.deployment, o.version))
            });
            (node.clone(), outcome)
        })
        .collect();
    report(results)
}

/// The version stored just before the active one of a deployment.
fn previous_version(agent: &ureq::Agent, node: &str, bearer: &str, tenant: &str, name: &str) -> Result<String, String> {
    let deployments =
        answer::<Vec<Deployment>>(agent.get(admin(node, "deployments")).header("authorization", bearer).call())?;
    let deployment = deployments
        .iter()
        .find(|d| d.tenant == tenant && d.name == name)
        .ok_or_else(|| format!("tenant `{tenant}` has no deployment `{name}`"))?;
    let at = deployment
        .versions
        .iter()
        .position(|v| deployment.active.as_deref() == Some(v.version.as_str()))
        .ok_or("the deployment has no active version")?;
    at.checked_sub(1).map(|before| deployment.versions[before].version.clone()).ok_or_else(|| {
        format!("{} is the first version: there is nothing to roll back to", deployment.versions[at].version)
    })
}

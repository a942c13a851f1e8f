//! Nodes that follow a registry tag: a real registry (Debian's
//! `docker-registry`), `mantle push` moving the tag, and `mantle serve`
//! deploying what it names, fetching only the blobs its store lacks. Faults
//! in the middle of a pull (the registry killed, wrong bytes, the node
//! killed, a full disk) leave the node serving one version, whole.

use super::deploy::{OPERATOR_TOKEN, TENANT_KEY, mantle, pack, path};
use mantle_tests::registry::{Registry, SlowRelay};
use mantle_tests::served::{ServedNode, key_sha256};
use mantle_tests::{damaged_blobs, model_path, padded_echo, programs};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const REPO: &str = "acme/greeter";

/// A node with tenant `acme` following `reference` every 200 ms over plain
/// HTTP, trusting `trusted` signers.
fn following(reference: &str, trusted: &[String]) -> String {
    format!(
        "[node]\nadmin_token_sha256 = \"{}\"\ntrusted_signers = {trusted:?}\n\n\
         [[tenant]]\nid = \"acme\"\nkey_sha256 = [\"{}\"]\n\n\
         [[tenant.follow]]\nreference = \"{reference}\"\ninterval_ms = 200\ninsecure = true\n",
        key_sha256(OPERATOR_TOKEN),
        key_sha256(TENANT_KEY)
    )
}

/// Packs bundle `greeter` at `version`: module `greet`, the echo guest (or
/// `guest`) greeting with the version, with the Silero VAD model if
/// `with_model`; signed with `key` if given.
pub(crate) fn greeter(
    root: &Path,
    version: &str,
    guest: Option<&[u8]>,
    with_model: bool,
    key: Option<&Path>,
) -> PathBuf {
    let dir = root.join(format!("greeter-{version}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    match guest {
        Some(wasm) => std::fs::write(dir.join("greet.wasm"), wasm),
        None => std::fs::copy(programs::ECHO, dir.join("greet.wasm")).map(|_| ()),
    }
    .expect("write the guest");
    let mut manifest = format!("[bundle]\nname = \"greeter\"\nversion = \"{version}\"\n\n");
    let mut grants = "";
    if with_model {
        std::fs::create_dir_all(dir.join("models")).expect("mkdir");
        let model = std::fs::read(model_path("silero-vad")).expect("the model");
        std::fs::write(dir.join("models/vad.onnx"), &model).expect("write the model");
        manifest.push_str(&format!(
            "[[model]]\nname = \"vad\"\nfile = \"models/vad.onnx\"\nsha256 = \"{}\"\n\n",
            mantle::types::Sha256::of(&model)
        ));
        grants = "models = [\"vad\"]\n";
    }
    manifest.push_str(&format!(
        "[[module]]\nid = \"greet\"\nfile = \"greet.wasm\"\n{grants}config = {{ greeting = \"version {version}\" }}\n"
    ));
    std::fs::write(dir.join("mantle.toml"), manifest).expect("write mantle.toml");
    pack(&dir, key)
}

/// `mantle push`es `bundle` to `reference`; its digest and "uploaded N of
/// M blobs".
pub(crate) fn push(bundle: &Path, reference: &str) -> (String, (usize, usize)) {
    let pushed = mantle(&["push", &path(bundle), reference, "--insecure"]);
    let stdout = String::from_utf8_lossy(&pushed.stdout).into_owned();
    assert_eq!(pushed.code, Some(0), "{stdout}{}", pushed.stderr);
    let digest = stdout.split_whitespace().find(|w| w.starts_with("sha256:")).expect("a digest").to_owned();
    let line = stdout.lines().find_map(|l| l.trim().strip_prefix("uploaded ")).expect("an uploaded line");
    let words: Vec<&str> = line.split_whitespace().collect();
    (digest, (words[0].parse().expect("a count"), words[2].parse().expect("a total")))
}

/// What `greet` answers now, or the status it fails with.
fn greeting(node: &ServedNode) -> Result<String, u16> {
    let reply = node.post("/t/acme/greet", Some(TENANT_KEY), b"");
    if reply.status != 200 {
        return Err(reply.status);
    }
    Ok(reply.json()["greeting"].as_str().expect("a greeting").to_owned())
}

/// Waits up to `limit` for `greet` to answer with `expected`.
fn wait_for_greeting(node: &ServedNode, expected: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let now = greeting(node);
        if now.as_deref() == Ok(expected) {
            return;
        }
        assert!(started.elapsed() < limit, "still {now:?} after {limit:?}, not {expected:?}: {}", follow(node));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node's one followed tag, as `/admin/v1/follows` shows it.
fn follow(node: &ServedNode) -> Value {
    let reply = node.get("/admin/v1/follows", Some(OPERATOR_TOKEN));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()[0].clone()
}

/// Waits up to `limit` for the followed tag's status to satisfy `ready`.
fn wait_for_follow(node: &ServedNode, limit: Duration, ready: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let status = follow(node);
        if ready(&status) {
            return status;
        }
        assert!(started.elapsed() < limit, "the follow did not reach the expected state in {limit:?}: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The versions the node's store holds of `greeter`, as the admin API lists.
fn stored_versions(node: &ServedNode) -> Vec<String> {
    let listed = node.get("/admin/v1/deployments", Some(OPERATOR_TOKEN)).json();
    let greeter = listed.as_array().expect("a list").iter().find(|d| d["name"] == "greeter").cloned();
    greeter.map_or_else(Vec::new, |d| {
        d["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v["version"].as_str().expect("a version").to_owned())
            .collect()
    })
}

fn counter(status: &Value, field: &str) -> u64 {
    status[field].as_u64().unwrap_or_else(|| panic!("{field} in {status}"))
}

#[test]
fn a_node_following_a_tag_deploys_each_push_fetching_only_what_it_lacks_and_rolls_back() {
    let root = tempfile::tempdir().expect("a temp dir");
    let signer = root.path().join("release");
    assert_eq!(mantle(&["keygen", &path(&signer)]).code, Some(0));
    let key = signer.with_extension("key");
    let trusted = std::fs::read_to_string(signer.with_extension("pub")).expect("the public key");
    let registry = Registry::start();
    let reference = format!("oci://{}/{REPO}:stable", registry.host());

    let v1 = greeter(root.path(), "1", None, true, Some(&key));
    let (v1_digest, uploaded) = push(&v1, &reference);
    assert_eq!(uploaded, (4, 4), "the config, mantle.toml, the guest and the model");
    let data = root.path().join("data");
    let config = following(&reference, &[trusted.trim().to_owned()]);
    let node = ServedNode::with_config_in(&config, &data);
    wait_for_greeting(&node, "version 1", Duration::from_secs(60));
    // The status is recorded just after the new version starts serving.
    let first = wait_for_follow(&node, Duration::from_secs(10), |s| s["digest"] == v1_digest.as_str());
    assert_eq!((counter(&first, "fetched_blobs"), counter(&first, "reused_blobs")), (4, 0), "{first}");

    // Version 2 changes only the greeting: two blobs go up, and the node
    // fetches those two and takes the guest and the model from its store.
    let v2 = greeter(root.path(), "2", None, true, Some(&key));
    let (v2_digest, uploaded) = push(&v2, &reference);
    assert_eq!(uploaded, (2, 4), "the config and mantle.toml");
    wait_for_greeting(&node, "version 2", Duration::from_secs(30));
    let second = wait_for_follow(&node, Duration::from_secs(10), |s| s["digest"] == v2_digest.as_str());
    assert_eq!((counter(&second, "fetched_blobs"), counter(&second, "reused_blobs")), (6, 2), "{second}");
    let model_bytes = std::fs::metadata(model_path("silero-vad")).expect("the model").len();
    let fetched_for_v2 = counter(&second, "fetched_bytes") - counter(&first, "fetched_bytes");
    assert!(
        fetched_for_v2 < 16 << 10,
        "{fetched_for_v2} bytes fetched for a new greeting (the model is {model_bytes})"
    );

    // An unsigned artifact is refused, once, and version 2 keeps serving.
    let unsigned = greeter(root.path(), "3", None, true, None);
    let (unsigned_digest, _) = push(&unsigned, &reference);
    let refused = wait_for_follow(&node, Duration::from_secs(30), |s| s["refused"] == unsigned_digest.as_str());
    assert!(refused["last_error"].as_str().is_some_and(|e| e.contains("not signed")), "{refused}");
    assert_eq!(greeting(&node).as_deref(), Ok("version 2"));
    let metrics = node.metrics();
    let labels = [("tenant", "acme"), ("reference", reference.as_str())];
    assert_eq!(metrics.value("mantle_follow_refused", &labels), 1.0);
    assert_eq!(
        metrics.value(
            "mantle_follow_serving",
            &[("tenant", "acme"), ("reference", &reference), ("digest", &v2_digest), ("version", "2")]
        ),
        1.0
    );
    let checks_before = counter(&follow(&node), "fetched_blobs");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(counter(&follow(&node), "fetched_blobs"), checks_before, "a refused artifact is not fetched again");

    // Moving the tag back to version 1 rolls back, fetching no model.
    let (back, uploaded) = push(&v1, &reference);
    assert_eq!((back.as_str(), uploaded), (v1_digest.as_str(), (0, 4)));
    wait_for_greeting(&node, "version 1", Duration::from_secs(30));
    let rolled = wait_for_follow(&node, Duration::from_secs(10), |s| s["digest"] == v1_digest.as_str());
    assert!(rolled["last_error"].is_null() && rolled["refused"].is_null(), "{rolled}");
    assert!(counter(&rolled, "fetched_bytes") - counter(&second, "fetched_bytes") < 16 << 10, "{rolled}");
    assert_eq!(stored_versions(&node), ["1", "2"], "the refused artifact was never stored");

    // The operator sees the followed tag with the deployment it serves.
    let listed = node.get("/admin/v1/deployments", Some(OPERATOR_TOKEN)).json();
    assert_eq!(listed[0]["follows"][0]["digest"], v1_digest.as_str(), "{listed}");
    let status = mantle(&["status", "--node", node.base(), "--token", OPERATOR_TOKEN]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains(&format!("follow {reference}  acme/greeter 1 {v1_digest}")), "{shown}");

    // A node that restarts with its store serves version 1 at once, and
    // to find the tag where it was it fetches the config blob alone.
    drop(node);
    let node = ServedNode::with_config_in(&config, &data);
    assert_eq!(greeting(&node).as_deref(), Ok("version 1"));
    let resumed = wait_for_follow(&node, Duration::from_secs(30), |s| s["digest"] == v1_digest.as_str());
    assert_eq!((counter(&resumed, "fetched_blobs"), counter(&resumed, "reused_blobs")), (1, 3), "{resumed}");
    assert_eq!(stored_versions(&node), ["1", "2"]);
}

#[test]
fn a_registry_killed_mid_pull_or_serving_wrong_bytes_leaves_the_old_version_serving() {
    let root = tempfile::tempdir().expect("a temp dir");
    let data = root.path().join("data");
    let mut registry = Registry::start();
    // The node reaches the registry through a relay at 4 MB/s, so that a
    // pull of a 16 MiB guest lasts long enough to be cut.
    let relay = SlowRelay::start(&registry.host(), 4_000_000);
    let direct = format!("oci://{}/{REPO}:stable", registry.host());
    let followed = format!("oci://{}/{REPO}:stable", relay.host());
    push(&greeter(root.path(), "1", None, false, None), &direct);
    let node = ServedNode::with_config_in(&following(&followed, &[]), &data);
    wait_for_greeting(&node, "version 1", Duration::from_secs(60));

    let v2 = greeter(root.path(), "2", Some(&padded_echo(2, 16 << 20)), false, None);
    let before = relay.relayed();
    push(&v2, &direct);
    let started = Instant::now();
    while relay.relayed() < before + (4 << 20) {
        assert!(started.elapsed() < Duration::from_secs(30), "the node did not start fetching version 2");
        std::thread::sleep(Duration::from_millis(10));
    }
    registry.kill();
    let failing = wait_for_follow(&node, Duration::from_secs(30), |s| counter(s, "failures") >= 1);
    assert!(failing["last_error"].as_str().is_some(), "{failing}");
    assert_eq!(greeting(&node).as_deref(), Ok("version 1"), "nothing partial is served");
    assert_eq!(stored_versions(&node), ["1"], "nothing partial is stored");
    assert_eq!(std::fs::read_dir(data.join("tmp")).expect("the store's tmp").count(), 0);

    registry.restart();
    wait_for_greeting(&node, "version 2", Duration::from_secs(60));
    // The status is recorded just after the new version starts serving.
    wait_for_follow(&node, Duration::from_secs(10), |s| s["last_error"].is_null());

    // Version 3's guest is served by the registry with other bytes of the
    // same length: refused, and retried, until the registry is repaired.
    let guest = padded_echo(3, 1 << 20);
    let v3 = greeter(root.path(), "3", Some(&guest), false, None);
    let staged = format!("oci://{}/{REPO}:staged", registry.host());
    push(&v3, &staged);
    let blob = registry.blob_file(&mantle::oci::oci_digest(&mantle::types::Sha256::of(&guest)));
    let mut wrong = guest.clone();
    let middle = wrong.len() / 2;
    wrong[middle] ^= 0xff;
    std::fs::write(&blob, &wrong).expect("damage the registry's copy");
    push(&v3, &direct);
    let refused = wait_for_follow(&node, Duration::from_secs(30), |s| {
        s["last_error"].as_str().is_some_and(|e| e.contains("sha256:") && counter(s, "failures") >= 1)
    });
    assert!(refused["refused"].is_null(), "wrong bytes are the registry's fault, tried again: {refused}");
    assert_eq!(greeting(&node).as_deref(), Ok("version 2"));
    assert_eq!(stored_versions(&node), ["1", "2"]);
    std::fs::write(&blob, &guest).expect("repair the registry's copy");
    wait_for_greeting(&node, "version 3", Duration::from_secs(60));
    drop(node);
    assert_eq!(damaged_blobs(&data), Vec::<String>::new());
}

#[test]
fn a_node_killed_mid_pull_restarts_into_the_old_or_the_new_version_and_finishes_the_pull() {
    let root = tempfile::tempdir().expect("a temp dir");
    let data = root.path().join("data");
    let registry = Registry::start();
    let relay = SlowRelay::start(&registry.host(), 8_000_000);
    let direct = format!("oci://{}/{REPO}:stable", registry.host());
    let config = following(&format!("oci://{}/{REPO}:stable", relay.host()), &[]);
    push(&greeter(root.path(), "1", None, false, None), &direct);
    let mut node = ServedNode::with_config_in(&config, &data);
    wait_for_greeting(&node, "version 1", Duration::from_secs(60));
    let mut active = "1".to_owned();
    for round in 2..=4u64 {
        let version = round.to_string();
        // 8 MiB at 8 MB/s: the pull takes about a second, and the kill
        // lands before, during or after it.
        push(&greeter(root.path(), &version, Some(&padded_echo(round, 8 << 20)), false, None), &direct);
        std::thread::sleep(Duration::from_millis((round * 7919) % 1500));
        node.kill();
        {
            let store = mantle::store::Store::open(&data).expect("the store opens after a kill");
            assert_eq!(damaged_blobs(&data), Vec::<String>::new(), "round {round}");
            let deployments = store.deployments().expect("deployments");
            let now = deployments.iter().find(|d| d.name == "greeter").and_then(|d| d.active.clone());
            assert!(now.as_deref() == Some(&active) || now.as_deref() == Some(&version), "round {round}: {now:?}");
            if let Some(stored) = deployments.iter().find_map(|d| d.active_version()) {
                store.load(stored).expect("the active version loads whole");
            }
        }
        // The restarted node serves what its store has, then finishes
        // following the tag.
        node = ServedNode::with_config_in(&config, &data);
        let served = greeting(&node).expect("the restarted node serves");
        assert!(served == format!("version {active}") || served == format!("version {version}"), "round {round}");
        wait_for_greeting(&node, &format!("version {version}"), Duration::from_secs(60));
        active = version;
    }
}

#[test]
fn a_full_disk_during_a_pull_is_refused_cleanly_and_the_pull_completes_once_there_is_room() {
    let root = tempfile::tempdir().expect("a temp dir");
    let data = root.path().join("data");
    let registry = Registry::start();
    let reference = format!("oci://{}/{REPO}:stable", registry.host());
    push(&greeter(root.path(), "1", None, false, None), &reference);
    let node = ServedNode::with_config_in(&following(&reference, &[]), &data);
    wait_for_greeting(&node, "version 1", Duration::from_secs(60));

    // Version 2 carries a 24 MiB guest, and the node may write no file
    // over 16 MiB.
    node.limit_file_size(16 << 20);
    push(&greeter(root.path(), "2", Some(&padded_echo(2, 24 << 20)), false, None), &reference);
    let full = wait_for_follow(&node, Duration::from_secs(30), |s| {
        s["last_error"].as_str().is_some_and(|e| e.contains("disk is full"))
    });
    assert!(full["refused"].is_null(), "a full disk is tried again: {full}");
    assert_eq!(greeting(&node).as_deref(), Ok("version 1"));
    assert_eq!(stored_versions(&node), ["1"]);
    assert_eq!(std::fs::read_dir(data.join("tmp")).expect("the store's tmp").count(), 0, "no partial file");

    node.limit_file_size(libc::RLIM_INFINITY);
    wait_for_greeting(&node, "version 2", Duration::from_secs(60));
}

#[test]
fn mantle_deploy_from_a_registry_has_each_node_fetch_the_bundle_itself() {
    let root = tempfile::tempdir().expect("a temp dir");
    let registry = Registry::start();
    let reference = format!("oci://{}/{REPO}:1", registry.host());
    push(&greeter(root.path(), "1", None, true, None), &reference);
    let config = format!(
        "[node]\nadmin_token_sha256 = \"{}\"\n\n[[tenant]]\nid = \"acme\"\nkey_sha256 = [\"{}\"]\n",
        key_sha256(OPERATOR_TOKEN),
        key_sha256(TENANT_KEY)
    );
    let nodes = [ServedNode::with_config(&config), ServedNode::with_config(&config)];
    let deploy = |reference: &str| {
        let mut args = vec!["deploy", reference, "--tenant", "acme", "--token", OPERATOR_TOKEN, "--insecure"];
        for node in &nodes {
            args.extend(["--node", node.base()]);
        }
        let finished = mantle(&args);
        (finished.code, String::from_utf8_lossy(&finished.stdout).into_owned())
    };
    let (code, said) = deploy(&reference);
    assert_eq!(code, Some(0), "{said}");
    for node in &nodes {
        let line = said.lines().find(|l| l.starts_with(node.base())).expect("a line per node");
        assert!(line.contains("greeter 1 active") && line.contains("fetched 4 blobs"), "{line}");
        assert_eq!(greeting(node).as_deref(), Ok("version 1"));
    }
    // A tag the registry does not have: each node says so, and serves on.
    let (code, said) = deploy(&format!("oci://{}/{REPO}:missing", registry.host()));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("refused (502)") && said.contains("manifest unknown"), "{said}");
    for node in &nodes {
        assert_eq!(greeting(node).as_deref(), Ok("version 1"));
    }
}

#[test]
fn a_tag_moved_to_something_that_is_not_a_bundle_is_refused_and_moving_it_back_serves_again() {
    let root = tempfile::tempdir().expect("a temp dir");
    let registry = Registry::start();
    let reference = format!("oci://{}/{REPO}:stable", registry.host());
    let v1 = greeter(root.path(), "1", None, false, None);
    push(&v1, &reference);
    let node = ServedNode::with_config(&following(&reference, &[]));
    wait_for_greeting(&node, "version 1", Duration::from_secs(60));

    // A container image's manifest, pushed over the plain distribution API:
    // valid to the registry, not a mantle bundle.
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    registry.push_blob(REPO, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mantle::oci::MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": mantle::oci::oci_digest(&mantle::types::Sha256::of(config)),
            "size": config.len(),
        },
        "layers": [],
    })
    .to_string();
    let put = registry
        .agent()
        .put(registry.url(&format!("/v2/{REPO}/manifests/stable")))
        .header("content-type", mantle::oci::MANIFEST_MEDIA_TYPE)
        .send(manifest.as_bytes())
        .expect("PUT the manifest");
    assert_eq!(put.status(), 201);
    let image = put.headers()["docker-content-digest"].to_str().expect("a digest").to_owned();
    let refused = wait_for_follow(&node, Duration::from_secs(30), |s| s["refused"] == image.as_str());
    assert!(refused["last_error"].as_str().is_some_and(|e| e.contains("not a mantle bundle")), "{refused}");
    assert_eq!(greeting(&node).as_deref(), Ok("version 1"));

    // Back to the bundle: served, and the refusal cleared.
    push(&v1, &reference);
    let cleared = wait_for_follow(&node, Duration::from_secs(30), |s| s["refused"].is_null());
    assert!(cleared["last_error"].is_null(), "{cleared}");
    assert_eq!(greeting(&node).as_deref(), Ok("version 1"));
}

#[test]
fn a_fresh_node_is_ready_once_its_followed_tag_serves_and_a_restarted_one_at_once() {
    let root = tempfile::tempdir().expect("a temp dir");
    let data = root.path().join("data");
    let mut registry = Registry::start();
    let reference = format!("oci://{}/{REPO}:stable", registry.host());
    // Nothing is on the tag yet: the node has nothing to serve for acme,
    // and a load balancer must not send it acme's traffic.
    let node = ServedNode::with_config_in(&following(&reference, &[]), &data);
    let waiting = node.get("/readyz", None);
    assert_eq!(waiting.status, 503, "{}", waiting.text());
    assert!(waiting.text().contains(&reference), "/readyz says which tag it waits for: {}", waiting.text());
    assert_eq!(node.get("/v2/health/ready", None).status, 503, "KServe's readiness agrees");
    assert_eq!(node.get("/healthz", None).status, 200, "the node is alive all along");

    push(&greeter(root.path(), "1.0.0", None, false, None), &reference);
    let started = Instant::now();
    while node.get("/readyz", None).status != 200 {
        assert!(started.elapsed() < Duration::from_secs(60), "never ready: {}", follow(&node));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(greeting(&node).as_deref(), Ok("version 1.0.0"), "ready means it serves the tag");
    drop(node);

    // Restarted while the registry is down: what the store holds serves,
    // so the node is ready at once.
    registry.kill();
    let node = ServedNode::with_config_in(&following(&reference, &[]), &data);
    let ready = node.get("/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(greeting(&node).as_deref(), Ok("version 1.0.0"));
}

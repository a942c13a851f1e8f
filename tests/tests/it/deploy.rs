//! Deployment as an operator does it: `mantle deploy`, `status` and
//! `rollback` against a real node, hot swaps under load, refusals that
//! leave the node as it was, and restarts that recompile nothing.

use mantle_tests::served::{ServedNode, key_sha256, tenant};
use mantle_tests::{Finished, damaged_blobs, model_path, padded_echo, programs, run_mantle};
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub(crate) const OPERATOR_TOKEN: &str = "operator-secret-0123456789";
pub(crate) const TENANT_KEY: &str = "mk_acme_0123456789abcdef";

pub(crate) fn mantle(args: &[&str]) -> Finished {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    run_mantle(&args, b"", Duration::from_secs(120))
}

pub(crate) fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A node with tenant `acme`, an operator token, and `trusted` signers.
pub(crate) fn node_config(trusted: &[String]) -> String {
    format!(
        "[node]\nadmin_token_sha256 = \"{}\"\ntrusted_signers = {trusted:?}\n\n\
         [[tenant]]\nid = \"acme\"\nkey_sha256 = [\"{}\"]\n",
        key_sha256(OPERATOR_TOKEN),
        key_sha256(TENANT_KEY)
    )
}

/// A bundle directory `greeter` at `version`, whose one module, `greet`,
/// is the echo test guest configured to greet with `version`.
pub(crate) fn greeter(root: &Path, version: &str) -> PathBuf {
    let dir = root.join(format!("greeter-{version}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(programs::ECHO, dir.join("greet.wasm")).expect("copy the guest");
    let manifest = format!(
        "[bundle]\nname = \"greeter\"\nversion = \"{version}\"\n\n\
         [[module]]\nid = \"greet\"\nfile = \"greet.wasm\"\nconfig = {{ greeting = \"version {version}\" }}\n"
    );
    std::fs::write(dir.join("mantle.toml"), manifest).expect("write mantle.toml");
    dir
}

/// Packs `dir` into `dir.mbundle`, signed with `key` if given.
pub(crate) fn pack(dir: &Path, key: Option<&Path>) -> PathBuf {
    let out = dir.with_extension("mbundle");
    let mut args = vec!["bundle".to_owned(), path(dir), "-o".to_owned(), path(&out)];
    if let Some(key) = key {
        args.extend(["--sign".to_owned(), path(key)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let packed = mantle(&args);
    assert_eq!(packed.code, Some(0), "stderr: {}", packed.stderr);
    out
}

pub(crate) fn deploy(node: &ServedNode, bundle: &Path) -> Finished {
    mantle(&["deploy", &path(bundle), "--tenant", "acme", "--node", node.base(), "--token", OPERATOR_TOKEN])
}

/// `mantle rollback` of deployment `greeter` on `node`.
fn roll_back(node: &ServedNode) -> Finished {
    mantle(&[
        "rollback",
        "--tenant",
        "acme",
        "--deployment",
        "greeter",
        "--node",
        node.base(),
        "--token",
        OPERATOR_TOKEN,
    ])
}

/// What `greet` answers now: its greeting.
pub(crate) fn greeting(node: &ServedNode) -> String {
    let reply = node.post("/t/acme/greet", Some(TENANT_KEY), b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["greeting"].as_str().expect("a greeting").to_owned()
}

#[test]
fn deploy_a_new_version_then_roll_back_with_the_cli_alone_and_restart_into_it() {
    let root = tempfile::tempdir().expect("a temp dir");
    let data = root.path().join("data");
    let mut node = ServedNode::with_config_in(&node_config(&[]), &data);
    assert_eq!(node.post("/t/acme/greet", Some(TENANT_KEY), b"").status, 404, "nothing deployed yet");

    let v1 = pack(&greeter(root.path(), "1"), None);
    let v2 = pack(&greeter(root.path(), "2"), None);
    let first = deploy(&node, &v1);
    assert_eq!(first.code, Some(0), "{}{}", String::from_utf8_lossy(&first.stdout), first.stderr);
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("greeter 1 active"),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    assert_eq!(greeting(&node), "version 1");

    assert_eq!(deploy(&node, &v2).code, Some(0));
    assert_eq!(greeting(&node), "version 2");

    let status = mantle(&["status", "--node", node.base(), "--token", OPERATOR_TOKEN]);
    assert_eq!(status.code, Some(0), "stderr: {}", status.stderr);
    let listed = String::from_utf8_lossy(&status.stdout);
    assert!(listed.contains("acme/greeter  active 2  versions 1, 2"), "{listed}");

    let back = roll_back(&node);
    assert_eq!(back.code, Some(0), "{}{}", String::from_utf8_lossy(&back.stdout), back.stderr);
    assert_eq!(greeting(&node), "version 1");

    // A restart comes back to exactly that state, from the compiled-code cache.
    node.terminate();
    assert_eq!(node.wait_exit(Duration::from_secs(30)), Some(0));
    let node = ServedNode::with_config_in(&node_config(&[]), &data);
    assert_eq!(greeting(&node), "version 1");
    node.wait_for_stderr("restored the active deployments", Duration::from_secs(10));
    let log = node.stderr();
    let line = log.lines().find(|l| l.contains("restored the active deployments")).expect("the restore line");
    assert!(line.contains("cache_hits=1"), "the module came from the cache, not the compiler: {line}");

    // Wrong token: refused, and nothing changes.
    let denied = mantle(&[
        "rollback",
        "--tenant",
        "acme",
        "--deployment",
        "greeter",
        "--version",
        "2",
        "--node",
        node.base(),
        "--token",
        "guess",
    ]);
    assert_eq!(denied.code, Some(1));
    assert!(
        String::from_utf8_lossy(&denied.stdout).contains("refused (401)"),
        "{}",
        String::from_utf8_lossy(&denied.stdout)
    );
    assert_eq!(greeting(&node), "version 1");

    // Deleting the deployment stops serving it.
    let deleted = node.send("DELETE", "/admin/v1/tenants/acme/deployments/greeter", Some(OPERATOR_TOKEN), b"");
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(node.post("/t/acme/greet", Some(TENANT_KEY), b"").status, 404);
    let status = mantle(&["status", "--node", node.base(), "--token", OPERATOR_TOKEN]);
    assert!(
        String::from_utf8_lossy(&status.stdout).contains("no deployments"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

#[test]
fn deploying_under_steady_load_fails_no_request() {
    let root = tempfile::tempdir().expect("a temp dir");
    let node = ServedNode::with_config(&node_config(&[]));
    let bundles: Vec<PathBuf> = ["1", "2", "3"].iter().map(|v| pack(&greeter(root.path(), v), None)).collect();
    assert_eq!(deploy(&node, &bundles[0]).code, Some(0));

    let stop = AtomicBool::new(false);
    let (served, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let reply = node.post("/t/acme/greet", Some(TENANT_KEY), b"");
                    let greeting =
                        if reply.status == 200 { reply.json()["greeting"].as_str().map(str::to_owned) } else { None };
                    match greeting {
                        Some(g) if g.starts_with("version ") => served.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        for bundle in bundles.iter().skip(1).chain(bundles.iter()) {
            let deployed = deploy(&node, bundle);
            assert_eq!(deployed.code, Some(0), "{}", String::from_utf8_lossy(&deployed.stdout));
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during the deploys");
    assert!(served.load(Ordering::Relaxed) > 10, "the load ran throughout: {}", served.load(Ordering::Relaxed));
    assert_eq!(greeting(&node), "version 3", "the last deploy of version 3 won");
}

/// A file of a bundle: its path and bytes.
type BundleFile<'a> = (&'a str, &'a [u8]);

/// A packed bundle with these entries, its index made to match, so that
/// only the content is wrong.
fn forge(out: &Path, files: &[BundleFile]) {
    use sha2::Digest;
    let index = serde_json::json!({
        "format": "mantle-bundle/1",
        "files": files.iter().map(|(p, b)| serde_json::json!({
            "path": p, "size": b.len(), "sha256": hex::encode(sha2::Sha256::digest(b)),
        })).collect::<Vec<_>>(),
    });
    let index = serde_json::to_vec(&index).expect("JSON");
    let mut archive = tar::Builder::new(Vec::new());
    for (name, bytes) in std::iter::once(("bundle.json", index.as_slice())).chain(files.iter().copied()) {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        archive.append_data(&mut header, name, bytes).expect("append");
    }
    std::fs::write(out, archive.into_inner().expect("finish")).expect("write the bundle");
}

#[test]
fn a_refused_bundle_names_its_problem_and_changes_nothing() {
    let root = tempfile::tempdir().expect("a temp dir");
    let signer = root.path().join("acme");
    let stranger = root.path().join("stranger");
    for stem in [&signer, &stranger] {
        assert_eq!(mantle(&["keygen", &path(stem)]).code, Some(0));
    }
    let trusted = std::fs::read_to_string(signer.with_extension("pub")).expect("the public key");
    let node = ServedNode::with_config(&node_config(&[trusted.trim().to_owned()]));
    let good = pack(&greeter(root.path(), "1"), Some(&signer.with_extension("key")));
    assert_eq!(deploy(&node, &good).code, Some(0));
    assert_eq!(greeting(&node), "version 1");

    let v2 = greeter(root.path(), "2");
    let flipped = root.path().join("flipped.mbundle");
    let mut bytes = std::fs::read(pack(&v2, Some(&signer.with_extension("key")))).expect("the bundle");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&flipped, bytes).expect("write");
    let strangers = root.path().join("strangers.mbundle");
    std::fs::rename(pack(&v2, Some(&stranger.with_extension("key"))), &strangers).expect("rename");
    let signed_cases = [
        ("a flipped byte", flipped, "corrupt"),
        ("a stranger's signature", strangers, "not a trusted key"),
        ("no signature", pack(&v2, None), "not signed"),
    ];
    for (what, bundle, reason) in signed_cases {
        let deployed = deploy(&node, &bundle);
        let said = String::from_utf8_lossy(&deployed.stdout).into_owned();
        assert_eq!(deployed.code, Some(1), "{what}: {said}");
        assert!(said.contains(reason), "{what}: {said}");
        assert_eq!(greeting(&node), "version 1", "{what} changed what is served");
    }

    // Bundles whose index is right but whose contents are wrong, at a node
    // that takes unsigned bundles.
    let open = ServedNode::with_config(&node_config(&[]));
    assert_eq!(deploy(&open, &pack(&greeter(root.path(), "1"), None)).code, Some(0));
    let echo = std::fs::read(programs::ECHO).expect("the echo guest");
    let manifest = std::fs::read_to_string(v2.join("mantle.toml")).expect("the manifest");
    let typo = format!("{manifest}route = \"/greet\"\n");
    let with_model =
        format!("{manifest}\n[[model]]\nname = \"m\"\nfile = \"m.onnx\"\nsha256 = \"{}\"\n", key_sha256("not shipped"));
    let command = std::fs::read(programs::WASI_COMMAND).expect("the WASI command");
    let forged: [(&str, &[BundleFile], &str); 4] = [
        ("an unknown field", &[("mantle.toml", typo.as_bytes()), ("greet.wasm", &echo)], "unknown field `route`"),
        ("a missing model", &[("mantle.toml", with_model.as_bytes()), ("greet.wasm", &echo)], "no file `m.onnx`"),
        (
            "a module that is not a component",
            &[("mantle.toml", manifest.as_bytes()), ("greet.wasm", b"\0asm\x01\0\0\0")],
            "not a component",
        ),
        (
            "a component of another world",
            &[("mantle.toml", manifest.as_bytes()), ("greet.wasm", &command)],
            "does not fit the mantle:edge/guest world",
        ),
    ];
    for (what, files, reason) in forged {
        let bundle = root.path().join("forged.mbundle");
        forge(&bundle, files);
        let deployed = deploy(&open, &bundle);
        let said = String::from_utf8_lossy(&deployed.stdout).into_owned();
        assert_eq!(deployed.code, Some(1), "{what}: {said}");
        assert!(said.contains(reason), "{what}: {said}");
        assert_eq!(greeting(&open), "version 1", "{what} changed what is served");
    }
}

#[test]
fn a_node_killed_during_deploys_restarts_into_the_old_or_the_new_version() {
    let root = tempfile::tempdir().expect("a temp dir");
    let data = root.path().join("data");
    let config = node_config(&[]);
    let mut node = ServedNode::with_config_in(&config, &data);
    let mut active: Option<String> = None;
    for round in 1..=20u64 {
        let version = round.to_string();
        let dir = greeter(root.path(), &version);
        std::fs::write(dir.join("greet.wasm"), padded_echo(round, 8 << 20)).expect("write the guest");
        let bundle = pack(&dir, None);
        // Kill the node somewhere between before the upload and after the
        // activation: here a deploy takes about 100 ms from the command's
        // start, so the spread lands before, during and after it.
        let delay = Duration::from_millis((round * 7919) % 250);
        std::thread::scope(|scope| {
            let base = node.base().to_owned();
            scope.spawn(move || {
                mantle(&["deploy", &path(&bundle), "--tenant", "acme", "--node", &base, "--token", OPERATOR_TOKEN])
            });
            std::thread::sleep(delay);
            node.kill();
        });

        // On disk: every blob is whole, and the active version is the one
        // before or the one being deployed, complete.
        {
            let store = mantle::store::Store::open(&data).expect("the store opens after a kill");
            assert_eq!(damaged_blobs(&data), Vec::<String>::new(), "round {round}");
            let deployments = store.deployments().expect("deployments");
            let now = deployments.iter().find(|d| d.name == "greeter").and_then(|d| d.active.clone());
            assert!(
                now == active || now.as_deref() == Some(version.as_str()),
                "round {round}: active {now:?}, before {active:?}"
            );
            if let Some(stored) = deployments.iter().find_map(|d| d.active_version()) {
                store.load(stored).expect("the active version loads whole");
            }
            active = now;
        }
        // And served: the restarted node answers with exactly that version.
        node = ServedNode::with_config_in(&config, &data);
        match &active {
            Some(version) => assert_eq!(greeting(&node), format!("version {version}"), "round {round}"),
            None => assert_eq!(node.post("/t/acme/greet", Some(TENANT_KEY), b"").status, 404),
        }
    }
    // After twenty kills the store takes the next deploy as usual.
    let last = pack(&greeter(root.path(), "21"), None);
    assert_eq!(deploy(&node, &last).code, Some(0));
    assert_eq!(greeting(&node), "version 21");
}

#[test]
fn a_deployment_serves_the_model_versions_its_policy_names_through_kserve() {
    let root = tempfile::tempdir().expect("a temp dir");
    let node = ServedNode::with_config(&node_config(&[]));
    let model = std::fs::read(mantle_tests::model_path("efficientnet-lite0")).expect("the model");
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&model))
    };
    // Two versions of the model, the same file, as a bundle that serves
    // them by `policy`.
    let bundle = |version: &str, policy: &str| {
        let dir = root.path().join(format!("models-{version}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("model.onnx"), &model).expect("copy the model");
        std::fs::copy(programs::ECHO, dir.join("greet.wasm")).expect("copy the guest");
        let table = |v: &str| {
            format!(
                "[[model]]\nname = \"efficientnet-lite0\"\nversion = \"{v}\"\nfile = \"model.onnx\"\nsha256 = \"{digest}\"\npin = {{ N = 1 }}\n\n"
            )
        };
        let manifest = format!(
            "[bundle]\nname = \"models\"\nversion = \"{version}\"\nkserve_versions = {policy}\n\n{}{}\
             [[module]]\nid = \"greet\"\nfile = \"greet.wasm\"\n",
            table("1"),
            table("2")
        );
        std::fs::write(dir.join("mantle.toml"), manifest).expect("write mantle.toml");
        pack(&dir, None)
    };
    let ready = |path: &str| node.get(&format!("/v2/models/efficientnet-lite0{path}/ready"), Some(TENANT_KEY)).status;
    let versions = || {
        let reply = node.get("/v2/models/efficientnet-lite0", Some(TENANT_KEY));
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["versions"].clone()
    };

    assert_eq!(deploy(&node, &bundle("a", "\"latest\"")).code, Some(0));
    assert_eq!(versions(), serde_json::json!(["2"]));
    assert_eq!((ready(""), ready("/versions/2"), ready("/versions/1")), (200, 200, 403));
    let zeros = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": vec![0.0f32; 3 * 224 * 224]}]
    });
    let reply = node.post(
        "/v2/models/efficientnet-lite0/versions/2/infer",
        Some(TENANT_KEY),
        &serde_json::to_vec(&zeros).expect("JSON"),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["model_version"], "2");

    assert_eq!(deploy(&node, &bundle("b", "[\"1\"]")).code, Some(0));
    assert_eq!(versions(), serde_json::json!(["1"]));
    assert_eq!((ready("/versions/1"), ready("/versions/2")), (200, 403));

    assert_eq!(deploy(&node, &bundle("c", "\"all\"")).code, Some(0));
    assert_eq!(versions(), serde_json::json!(["1", "2"]));

    assert_eq!(deploy(&node, &bundle("d", "\"none\"")).code, Some(0));
    assert_eq!(ready(""), 403, "no version is served, and the guest still runs");
    assert_eq!(node.post("/t/acme/greet", Some(TENANT_KEY), b"").status, 200);
}

#[test]
fn a_full_disk_refuses_the_deploy_with_507_and_keeps_what_was_served() {
    let root = tempfile::tempdir().expect("a temp dir");
    let data = root.path().join("data");
    let node = ServedNode::with_config_in(&node_config(&[]), &data);
    assert_eq!(deploy(&node, &pack(&greeter(root.path(), "1"), None)).code, Some(0));
    assert_eq!(greeting(&node), "version 1");

    // Version 2 carries a 24 MiB guest, and the node may now write no file
    // over 16 MiB: its blob cannot be stored.
    let dir = greeter(root.path(), "2");
    std::fs::write(dir.join("greet.wasm"), padded_echo(2, 24 << 20)).expect("write the guest");
    let v2 = pack(&dir, None);
    node.limit_file_size(16 << 20);
    let refused = deploy(&node, &v2);
    let said = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert_eq!(refused.code, Some(1), "{said}");
    assert!(said.contains("507") && said.contains("disk is full"), "{said}");

    // Nothing changed: the same version serves, the store lists only it,
    // and no partial file is left behind.
    assert_eq!(greeting(&node), "version 1");
    let listed = node.get("/admin/v1/deployments", Some(OPERATOR_TOKEN)).json();
    let versions: Vec<&str> =
        listed[0]["versions"].as_array().expect("versions").iter().filter_map(|v| v["version"].as_str()).collect();
    assert_eq!(versions, ["1"], "{listed}");
    let leftovers: Vec<_> = std::fs::read_dir(data.join("tmp")).expect("the store's tmp").collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Once there is room again, the same bundle deploys.
    node.limit_file_size(libc::RLIM_INFINITY);
    let deployed = deploy(&node, &v2);
    assert_eq!(deployed.code, Some(0), "{}", String::from_utf8_lossy(&deployed.stdout));
    assert_eq!(greeting(&node), "version 2");
}

#[test]
fn a_blob_damaged_on_disk_is_refused_at_start_while_other_deployments_serve() {
    let root = tempfile::tempdir().expect("a temp dir");
    let data = root.path().join("data");
    let config = node_config(&[]);
    let greeter_dir = greeter(root.path(), "1");
    let other = root.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::copy(programs::ECHO, other.join("other.wasm")).expect("copy the guest");
    let manifest = "[bundle]\nname = \"other\"\nversion = \"1\"\n\n[[module]]\nid = \"other\"\nfile = \"other.wasm\"\n";
    std::fs::write(other.join("mantle.toml"), manifest).expect("write mantle.toml");
    {
        let mut node = ServedNode::with_config_in(&config, &data);
        for dir in [&greeter_dir, &other] {
            assert_eq!(deploy(&node, &pack(dir, None)).code, Some(0));
        }
        node.terminate();
        assert_eq!(node.wait_exit(Duration::from_secs(30)), Some(0), "a clean stop");
    }

    // One byte of greeter's manifest rots on disk while the node is down.
    let manifest = std::fs::read_to_string(greeter_dir.join("mantle.toml")).expect("the manifest");
    let blob = data.join("blobs").join(key_sha256(&manifest));
    let mut rotten = std::fs::read(&blob).expect("the manifest's blob");
    rotten[0] ^= 0x20;
    std::fs::write(&blob, rotten).expect("damage the blob");

    let node = ServedNode::with_config_in(&config, &data);
    assert_eq!(node.post("/t/acme/other", Some(TENANT_KEY), b"").status, 200, "the other deployment serves");
    let reply = node.post("/t/acme/greet", Some(TENANT_KEY), b"");
    assert_eq!(reply.status, 404, "the damaged deployment is not served: {}", reply.text());
    let log = node.stderr();
    assert!(
        log.contains("greeter") && log.contains("does not match its SHA-256"),
        "the log names the deployment and the damage: {log}"
    );
}

const NEIGHBOUR_KEY: &str = "mk_neighbour_0123456789ab";

/// `config` with one more tenant, `neighbour`, serving the echo guest.
fn with_neighbour(config: &str) -> String {
    format!(
        "{config}\n[[tenant]]\nid = \"neighbour\"\nkey_sha256 = [\"{}\"]\n\n[[tenant.module]]\nid = \"echo\"\npath = '{}'\n",
        key_sha256(NEIGHBOUR_KEY),
        programs::ECHO
    )
}

fn neighbour_is_served(node: &ServedNode) {
    let reply = node.post("/t/neighbour/echo", Some(NEIGHBOUR_KEY), b"still here");
    assert_eq!(reply.status, 200, "the neighbour: {}", reply.text());
    assert_eq!(reply.json()["tenant"], "neighbour");
}

/// Uploads the packed `bundle` for `tenant` through the admin API.
fn upload_for(node: &ServedNode, tenant: &str, bundle: &[u8]) -> mantle_tests::served::Reply {
    node.send_with(
        "POST",
        &format!("/admin/v1/tenants/{tenant}/deployments"),
        Some(OPERATOR_TOKEN),
        &[("content-type", "application/octet-stream")],
        bundle,
    )
}

#[test]
fn a_tenants_ceilings_bound_what_its_bundles_ask_for_and_status_shows_them() {
    const SMALL_KEY: &str = "mk_small_0123456789abcdef";
    let config = format!(
        "{}\n[[tenant]]\nid = \"roomy\"\nkey_sha256 = [\"{}\"]\nlimits = {{ max_memory_mib = 1024, max_deadline_ms = 60000 }}\n\n\
         [[tenant]]\nid = \"small\"\nkey_sha256 = [\"{}\"]\nlimits = {{ max_memory_mib = 64 }}\n",
        node_config(&[]),
        key_sha256("mk_roomy_0123456789abcdef"),
        key_sha256(SMALL_KEY),
    );
    let node = ServedNode::with_config(&with_neighbour(&config));
    let echo = std::fs::read(programs::ECHO).expect("the echo guest");
    let asking =
        |limits: &str| mantle_tests::served::bundle_of("greedy", "greedy", &echo, &format!("limits = {limits}"));

    for (limits, refusal) in [
        ("{ memory_mib = 4096 }", "it asks for memory_mib = 4096, over the tenant's max_memory_mib of 256"),
        (
            "{ deadline_ms = 86400000 }",
            "it asks for deadline_ms = 86400000, over the tenant's max_deadline_ms of 10000",
        ),
    ] {
        let refused = upload_for(&node, "acme", &asking(limits));
        assert_eq!(refused.status, 422, "{limits}: {}", refused.text());
        assert!(refused.error().contains(refusal), "{limits}: {}", refused.error());
        neighbour_is_served(&node);
    }
    let listed = node.get("/admin/v1/deployments", Some(OPERATOR_TOKEN)).json();
    assert_eq!(listed, serde_json::json!([]), "a refused bundle is not stored");

    // A tenant the operator gave more may ask for it.
    let roomy = upload_for(&node, "roomy", &asking("{ memory_mib = 1024, deadline_ms = 60000 }"));
    assert_eq!(roomy.status, 200, "{}", roomy.text());

    // What a bundle leaves out is the default, lowered to the ceiling: 64 MiB.
    let hostile = std::fs::read(programs::HOSTILE).expect("the hostile guest");
    let small = upload_for(&node, "small", &mantle_tests::served::bundle_of("hoard", "hoard", &hostile, ""));
    assert_eq!(small.status, 200, "{}", small.text());
    assert_eq!(node.post("/t/small/hoard?tensors=32", Some(SMALL_KEY), b"").status, 200);
    let over = node.post("/t/small/hoard?tensors=80", Some(SMALL_KEY), b"");
    assert_eq!(over.status, 500, "{}", over.text());
    assert!(over.error().contains("ran out of memory"), "{}", over.error());

    let status = mantle(&["status", "--node", node.base(), "--token", OPERATOR_TOKEN]);
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let shown = String::from_utf8_lossy(&status.stdout);
    for line in [
        "tenant acme  modules up to 256 MiB and 10000 ms",
        "tenant roomy  modules up to 1024 MiB and 60000 ms",
        "tenant small  modules up to 64 MiB and 10000 ms",
    ] {
        assert!(shown.contains(line), "`{line}` in: {shown}");
    }
}

#[test]
fn a_bundle_whose_module_can_never_start_is_refused_and_the_active_version_serves() {
    let root = tempfile::tempdir().expect("a temp dir");
    let node = ServedNode::with_config(&with_neighbour(&node_config(&[])));
    let v1 = pack(&greeter(root.path(), "1"), None);
    assert_eq!(deploy(&node, &v1).code, Some(0));
    assert_eq!(greeting(&node), "version 1");

    let crafted = mantle_tests::crafted::Crafted::new();
    for (what, crafted) in [
        ("a start function that traps", crafted.clone().main("(func $start unreachable) (start $start)")),
        ("a data segment past its memory", crafted.clone().main(r#"(data (i32.const 5000000) "x")"#)),
        ("a memory over its limit", mantle_tests::crafted::Crafted { main_pages: 8192, ..crafted.clone() }),
    ] {
        let manifest_extra = "";
        let bundle = mantle_tests::served::bundle_of("greeter", "greet", &crafted.build(), manifest_extra);
        let refused = upload_for(&node, "acme", &bundle);
        assert_eq!(refused.status, 422, "{what}: {}", refused.text());
        assert!(refused.error().contains("module `greet` cannot start"), "{what}: {}", refused.error());
        assert_eq!(greeting(&node), "version 1", "{what}: the active version still serves");
        neighbour_is_served(&node);
    }
}

/// The operator's requests are observed as tenants' are: each has a
/// request id, a log line naming it and its outcome, and a count in
/// `/metrics` by operation and status, refusals included. The bearer
/// scheme is read in any case, as for tenants.
#[test]
fn every_admin_request_is_logged_with_its_request_id_and_counted() {
    let node = ServedNode::with_config(&node_config(&[]));
    let id = [("x-request-id", "operator-call-7")];
    let listed = node.send_with("GET", "/admin/v1/deployments", Some(OPERATOR_TOKEN), &id, b"");
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.header("x-request-id"), Some("operator-call-7"));
    let lowercase = [("authorization", format!("bearer {OPERATOR_TOKEN}"))];
    let lowercase: Vec<(&str, &str)> = lowercase.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(node.send_with("GET", "/admin/v1/tenants", None, &lowercase, b"").status, 200);
    let refused = node.send("DELETE", "/admin/v1/tenants/acme/deployments/greeter", Some("not-the-token"), b"");
    assert_eq!(refused.status, 401, "{}", refused.text());
    let refused_id = refused.header("x-request-id").expect("a refusal has a request id too").to_owned();

    node.wait_for_stderr("operator-call-7", Duration::from_secs(5));
    node.wait_for_stderr(&refused_id, Duration::from_secs(5));
    let log = node.stderr();
    let line = log.lines().find(|l| l.contains("operator-call-7")).expect("the listing's log line");
    assert!(line.contains("/admin/v1/deployments") && line.contains("status=200"), "{line}");
    let line = log.lines().find(|l| l.contains(&refused_id)).expect("the refusal's log line");
    assert!(line.contains("status=401"), "{line}");

    let metrics = node.metrics();
    let count = |operation: &str, status: &str| {
        metrics.value("mantle_admin_requests_total", &[("operation", operation), ("status", status)])
    };
    assert_eq!(count("GET /admin/v1/deployments", "200"), 1.0);
    assert_eq!(count("GET /admin/v1/tenants", "200"), 1.0);
    assert_eq!(count("DELETE /admin/v1/tenants/{tenant}/deployments/{name}", "401"), 1.0);
}

/// One model file, named by `node.toml` and shipped twice in one bundle
/// by each of two tenants, is read, optimized and held once: the log has
/// one load of its digest, the second tenant's deploy costs less memory
/// than the model's file, and both tenants are served the model.
#[test]
fn a_model_named_by_the_configuration_and_by_two_tenants_bundles_is_loaded_once() {
    const OTHER_KEY: &str = "mk_globex_0123456789abcdef";
    let path = model_path("efficientnet-lite0");
    let model = std::fs::read(&path).expect("the model");
    let digest = hex::encode(Sha256::digest(&model));
    let config = format!(
        "[node]\nadmin_token_sha256 = \"{}\"\n\n[[model]]\nname = \"efficientnet-lite0\"\npath = '{}'\n\
         pin = {{ N = 1 }}\n\n{}{}",
        key_sha256(OPERATOR_TOKEN),
        path.display(),
        tenant("acme", TENANT_KEY, &["efficientnet-lite0"], ""),
        tenant("globex", OTHER_KEY, &[], ""),
    );
    let node = ServedNode::with_config(&config);
    let loads = |node: &ServedNode| {
        let log = node.stderr();
        log.lines().filter(|l| l.contains("loaded and optimized the model") && l.contains(&digest)).count()
    };
    assert_eq!(loads(&node), 1, "the configured model loads at start: {}", node.stderr());
    // Two entries of one bundle share the file, under two names.
    let bundle = |name: &str| {
        let manifest = format!(
            "[bundle]\nname = \"{name}\"\nversion = \"1\"\nkserve_versions = \"all\"\n\n\
             [[model]]\nname = \"vision\"\nfile = \"m.onnx\"\nsha256 = \"{digest}\"\npin = {{ N = 1 }}\n\n\
             [[model]]\nname = \"vision-copy\"\nfile = \"m.onnx\"\nsha256 = \"{digest}\"\npin = {{ N = 1 }}\n\n\
             [[module]]\nid = \"{name}\"\nfile = \"echo.wasm\"\nmodels = [\"vision\", \"vision-copy\"]\n"
        );
        let files = std::collections::BTreeMap::from([
            ("mantle.toml".to_owned(), manifest.into_bytes()),
            ("m.onnx".to_owned(), model.clone()),
            ("echo.wasm".to_owned(), std::fs::read(programs::ECHO).expect("the echo guest")),
        ]);
        let bundle = mantle::bundle::Bundle::from_files(files, None).expect("a bundle");
        bundle.pack(None).expect("packs")
    };
    let upload = |tenant: &str, bytes: &[u8]| {
        let reply = node.send("POST", &format!("/admin/v1/tenants/{tenant}/deployments"), Some(OPERATOR_TOKEN), bytes);
        assert_eq!(reply.status, 200, "{tenant}: {}", reply.text());
    };
    upload("acme", &bundle("vision-a"));
    let after_first = node.rss_bytes();
    upload("globex", &bundle("vision-b"));
    let after_second = node.rss_bytes();
    assert_eq!(loads(&node), 1, "loaded again: {}", node.stderr());
    let metrics = node.metrics();
    assert_eq!(metrics.value("mantle_model_load_duration_seconds_count", &[]), 1.0, "one load timed");
    assert!(metrics.value("mantle_model_load_duration_seconds_sum", &[]) > 0.0);
    let grown = after_second.saturating_sub(after_first);
    assert!(
        grown < model.len() as u64,
        "the second deploy grew the node by {grown} bytes, the model is {}",
        model.len()
    );

    for (tenant, key) in [("acme", TENANT_KEY), ("globex", OTHER_KEY)] {
        for name in ["vision", "vision-copy"] {
            let metadata = node.get(&format!("/v2/models/{name}"), Some(key));
            assert_eq!(metadata.status, 200, "{tenant}, {name}: {}", metadata.text());
        }
    }
    let configured = node.get("/v2/models/efficientnet-lite0", Some(TENANT_KEY));
    assert_eq!(configured.status, 200, "{}", configured.text());
}

/// The one `mantle_deployment_info` series a node shows: its labels.
fn deployment_info(node: &ServedNode) -> std::collections::BTreeMap<String, String> {
    let metrics = node.metrics();
    let series = metrics.series("mantle_deployment_info");
    assert_eq!(series.len(), 1, "one deployment, one series: {series:?}");
    assert_eq!(series[0].1, 1.0);
    series[0].0.clone()
}

#[test]
fn every_node_tells_prometheus_its_build_its_process_and_the_digest_it_serves() {
    let root = tempfile::tempdir().expect("a temp dir");
    let first = pack(&greeter(root.path(), "1.0.0"), None);
    let second = pack(&greeter(root.path(), "1.1.0"), None);
    let nodes = [ServedNode::with_config(&node_config(&[])), ServedNode::with_config(&node_config(&[]))];
    for node in &nodes {
        assert_eq!(deploy(node, &first).code, Some(0));
    }
    let [a, b] = [deployment_info(&nodes[0]), deployment_info(&nodes[1])];
    assert_eq!((a["tenant"].as_str(), a["deployment"].as_str(), a["version"].as_str()), ("acme", "greeter", "1.0.0"));
    let digest = a["digest"].strip_prefix("sha256:").expect("a sha256 digest");
    assert!(digest.len() == 64 && digest.bytes().all(|c| c.is_ascii_hexdigit()), "{a:?}");
    assert_eq!(a, b, "two nodes serving the same bundle show the same digest");

    // A new version replaces the series; the node beside it is unchanged.
    assert_eq!(deploy(&nodes[0], &second).code, Some(0));
    let moved = deployment_info(&nodes[0]);
    assert_eq!(moved["version"], "1.1.0");
    assert_ne!(moved["digest"], a["digest"]);
    assert_eq!(deployment_info(&nodes[1]), b);
    let back = roll_back(&nodes[0]);
    assert_eq!(back.code, Some(0), "{}", back.stderr);
    assert_eq!(deployment_info(&nodes[0]), a, "rolled back, the digest is the first one's again");

    let node = &nodes[0];
    let metrics = node.metrics();
    let build = metrics.series("mantle_build_info");
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(mantle_tests::repo_root())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    if let Some(head) = head {
        assert_eq!(build[0].0["commit"], head, "built from the checked-out commit");
    }
    let rss = node.rss_bytes() as f64;
    let reported = metrics.value("process_resident_memory_bytes", &[]);
    assert!(reported > rss / 2.0 && reported < rss * 2.0, "RSS {reported} reported, {rss} in /proc");
    assert!(metrics.value("process_open_fds", &[]) >= 3.0);
    assert!(metrics.value("process_max_fds", &[]) >= metrics.value("process_open_fds", &[]));
    assert!(metrics.value("process_cpu_seconds_total", &[]) > 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64();
    let started = metrics.value("process_start_time_seconds", &[]);
    assert!(started <= now + 1.0 && started > now - 600.0, "started at {started}, now {now}");
}

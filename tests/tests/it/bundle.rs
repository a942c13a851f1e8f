//! Bundles as a tenant makes and ships them: `mantle keygen`, `mantle
//! bundle`, and `mantle run --bundle`, which must answer what the module
//! answers on its own, and refuse a damaged or untrusted bundle by name.

use mantle_tests::{
    Finished, example_wasm, mantle_binary, model_grant, model_path, models_dir, repo_root, run_mantle, sample,
    target_dir,
};
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

fn mantle(args: &[&str], stdin: &[u8]) -> Finished {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    run_mantle(&args, stdin, Duration::from_secs(120))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A bundle directory with the image-classify example and its model, as a
/// tenant would lay it out; `extra` is appended to its mantle.toml.
fn vision_bundle(root: &Path, extra: &str) -> std::path::PathBuf {
    let dir = root.join("vision");
    std::fs::create_dir_all(dir.join("models")).expect("mkdir");
    let wasm = example_wasm(&dir, "image-classify");
    std::fs::rename(&wasm, dir.join("classify.wasm")).expect("rename");
    let model = std::fs::read(model_path("efficientnet-lite0")).expect("the model");
    std::fs::write(dir.join("models/efficientnet-lite0.onnx"), &model).expect("copy the model");
    let manifest = format!(
        "[bundle]\nname = \"vision\"\nversion = \"1.0.0\"\n\n\
         [[model]]\nname = \"efficientnet-lite0\"\nfile = \"models/efficientnet-lite0.onnx\"\n\
         sha256 = \"{}\"\npin = {{ N = 1 }}\n\n\
         [[module]]\nid = \"classify\"\nfile = \"classify.wasm\"\nmodels = [\"efficientnet-lite0\"]\n\
         limits = {{ memory_mib = 128, deadline_ms = 10000 }}\n{extra}",
        sha256_hex(&model)
    );
    std::fs::write(dir.join("mantle.toml"), manifest).expect("write mantle.toml");
    dir
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn a_signed_bundle_runs_offline_as_its_module_does() {
    let root = tempfile::tempdir().expect("a temp dir");
    let dir = vision_bundle(root.path(), "");
    let keys = root.path().join("acme");
    let made = mantle(&["keygen", &path(&keys)], b"");
    assert_eq!(made.code, Some(0), "stderr: {}", made.stderr);
    let packed = root.path().join("vision.mbundle");
    let key = path(&keys.with_extension("key"));
    let bundled = mantle(&["bundle", &path(&dir), "-o", &path(&packed), "--sign", &key], b"");
    assert_eq!(bundled.code, Some(0), "stderr: {}", bundled.stderr);
    assert!(
        String::from_utf8_lossy(&bundled.stdout).contains("vision 1.0.0"),
        "{}",
        String::from_utf8_lossy(&bundled.stdout)
    );

    let photo = sample("chelsea.png");
    let module = example_wasm(root.path(), "image-classify");
    let grant = model_grant("efficientnet-lite0");
    let alone = mantle(&["run", &module, "--model", &grant, "--pin", "efficientnet-lite0:N=1"], &photo);
    assert_eq!(alone.code, Some(0), "stderr: {}", alone.stderr);
    let public = path(&keys.with_extension("pub"));
    for bundle in [&packed, &dir] {
        let mut args = vec!["run", "--bundle"];
        let bundle = path(bundle);
        args.push(&bundle);
        if bundle.ends_with(".mbundle") {
            args.extend(["--trust", &public]);
        }
        let ran = mantle(&args, &photo);
        assert_eq!(ran.code, Some(0), "{bundle}: {}", ran.stderr);
        assert_eq!(ran.stdout, alone.stdout, "{bundle} answers what its module answers");
    }
}

#[test]
fn a_damaged_or_untrusted_bundle_is_refused_by_name() {
    let root = tempfile::tempdir().expect("a temp dir");
    let dir = vision_bundle(root.path(), "");
    let signer = root.path().join("acme");
    let stranger = root.path().join("stranger");
    for stem in [&signer, &stranger] {
        assert_eq!(mantle(&["keygen", &path(stem)], b"").code, Some(0));
    }
    let packed = root.path().join("vision.mbundle");
    let signed =
        mantle(&["bundle", &path(&dir), "-o", &path(&packed), "--sign", &path(&signer.with_extension("key"))], b"");
    assert_eq!(signed.code, Some(0), "stderr: {}", signed.stderr);
    let photo = sample("chelsea.png");

    // Signed by a key the runner does not trust.
    let stranger_pub = path(&stranger.with_extension("pub"));
    let refused = mantle(&["run", "--bundle", &path(&packed), "--trust", &stranger_pub], &photo);
    assert_eq!(refused.code, Some(3), "stderr: {}", refused.stderr);
    assert!(refused.stderr.contains("not a trusted key"), "{}", refused.stderr);

    // One flipped byte in the model, the last and largest file.
    let mut bytes = std::fs::read(&packed).expect("the bundle");
    let at = bytes.len() - 100_000;
    bytes[at] ^= 0x01;
    let corrupt = root.path().join("corrupt.mbundle");
    std::fs::write(&corrupt, &bytes).expect("write");
    let refused = mantle(&["run", "--bundle", &path(&corrupt)], &photo);
    assert_eq!(refused.code, Some(3), "stderr: {}", refused.stderr);
    assert!(
        refused.stderr.contains("models/efficientnet-lite0.onnx") && refused.stderr.contains("corrupt"),
        "{}",
        refused.stderr
    );

    // A field the manifest does not have.
    let typo = vision_bundle(&root.path().join("typo"), "route = \"/classify\"\n");
    let refused = mantle(&["bundle", &path(&typo), "-o", &path(&root.path().join("typo.mbundle"))], b"");
    assert_eq!(refused.code, Some(3), "stderr: {}", refused.stderr);
    assert!(
        refused.stderr.contains("unknown field `route`") && refused.stderr.contains("line 16"),
        "{}",
        refused.stderr
    );

    // A model the manifest names but the bundle lacks.
    std::fs::remove_file(dir.join("models/efficientnet-lite0.onnx")).expect("remove the model");
    let refused = mantle(&["run", "--bundle", &path(&dir)], &photo);
    assert_eq!(refused.code, Some(3), "stderr: {}", refused.stderr);
    assert!(refused.stderr.contains("efficientnet-lite0.onnx"), "{}", refused.stderr);

    // A module that is not a component of mantle's world.
    let core = vision_bundle(&root.path().join("core"), "");
    std::fs::write(core.join("classify.wasm"), b"\0asm\x01\0\0\0").expect("write a core module");
    let refused = mantle(&["run", "--bundle", &path(&core)], &photo);
    assert_eq!(refused.code, Some(3), "stderr: {}", refused.stderr);
    assert!(
        refused.stderr.contains("module `classify`") && refused.stderr.contains("not a component"),
        "{}",
        refused.stderr
    );
}

#[test]
fn the_readme_bundle_and_deploy_commands_work_as_printed() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("the README");
    let block = |heading: &str| {
        readme
            .split(heading)
            .nth(1)
            .and_then(|section| section.split("```sh\n").nth(1))
            .and_then(|block| block.split("\n```").next())
            .unwrap_or_else(|| panic!("the README has commands under {heading}"))
            .to_owned()
    };
    // The nodes listen on free ports rather than the README's 8081 and
    // 8082, and the registry is the tests' own rather than one on 5000.
    let free_port =
        || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let registry = mantle_tests::registry::Registry::start();
    let deploy = block("## Deploy to nodes").replace("127.0.0.1:8081", &format!("127.0.0.1:{}", free_port()));
    let follow = block("### Through an OCI registry")
        .replace("127.0.0.1:8082", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:5000", &registry.host());
    // The nodes started in the background are stopped whatever happens.
    let script =
        format!("trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{}\n{deploy}\n{follow}", block("## Ship a bundle"));
    // A directory that looks like the repository root: the commands write
    // their files beside `target/` and `models/`.
    let root = tempfile::tempdir().expect("a temp dir");
    mantle_binary();
    std::os::unix::fs::symlink(target_dir(), root.path().join("target")).expect("link target/");
    std::os::unix::fs::symlink(models_dir(), root.path().join("models")).expect("link models/");
    let output = std::process::Command::new("timeout")
        .args(["600", "bash", "-euc", &script])
        .current_dir(root.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let espresso = r#"{"top":[{"index":967,"label":"espresso""#;
    let answers: Vec<&str> = stdout.lines().filter(|l| l.contains(espresso)).collect();
    assert_eq!(
        answers.len(),
        4,
        "offline, deployed, from the followed tag and offline from the registry, the photo is an espresso: {stdout}"
    );
    // The bundle run from the registry answers the bytes the file does. An
    // answer ends without a newline, so the next command's output may
    // follow it on its line.
    let answer = |line: &str| line.find("]}").map(|end| line[..end + 2].to_owned()).expect("a whole answer");
    assert_eq!(answer(answers[0]), answer(answers[3]), "mantle run --bundle oci:// and --bundle FILE");
    for expected in [
        "vision 1.0.0 active",
        "vision 1.1.0 active",
        "acme/vision  active 1.1.0  versions 1.0.0, 1.1.0",
        "acme/vision 1.0.0 active",
        "uploaded 4 of 4 blobs",
        "uploaded 2 of 4 blobs",
        "uploaded 0 of 4 blobs",
        "acme/vision  active 1.0.0  versions 1.0.0, 1.1.0",
        &format!("follow oci://{}/acme/vision:stable  acme/vision 1.0.0 sha256:", registry.host()),
    ] {
        assert!(stdout.contains(expected), "{expected}: {stdout}");
    }
}

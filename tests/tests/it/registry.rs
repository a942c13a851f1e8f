//! A bundle's OCI artifact in a real registry (Debian's `docker-registry`,
//! the CNCF distribution server), pushed and read back over the plain
//! distribution API: the layout of `docs/OCI.md` is one a registry stores
//! and serves as it is.

use mantle::bundle::{Bundle, Packed};
use mantle::oci::{Artifact, MANIFEST_MEDIA_TYPE, oci_digest, packed_from, parse_digest, parse_manifest};
use mantle_tests::registry::Registry;
use mantle_tests::{model_path, programs};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// A signed bundle of the echo guest and the Silero VAD model.
fn packed_bundle() -> Packed {
    let model = std::fs::read(model_path("silero-vad")).expect("the model");
    let manifest = format!(
        "[bundle]\nname = \"speech\"\nversion = \"1\"\n\n\
         [[model]]\nname = \"vad\"\nfile = \"models/vad.onnx\"\nsha256 = \"{}\"\n\n\
         [[module]]\nid = \"echo\"\nfile = \"echo.wasm\"\nmodels = [\"vad\"]\n",
        mantle::types::Sha256::of(&model)
    );
    let files = BTreeMap::from([
        ("mantle.toml".to_owned(), manifest.into_bytes()),
        ("models/vad.onnx".to_owned(), model),
        ("echo.wasm".to_owned(), std::fs::read(programs::ECHO).expect("the echo guest")),
    ]);
    let bundle = Bundle::from_files(files, None).expect("a valid bundle");
    let key = mantle::bundle::keys::generate().expect("a key");
    bundle.packed(Some(&key)).expect("packs")
}

#[test]
fn a_bundle_pushed_as_an_oci_artifact_is_served_back_whole_by_a_real_registry() {
    let registry = Registry::start();
    let packed = packed_bundle();
    let artifact = Artifact::from_packed(packed.clone()).expect("an artifact");
    let repo = "acme/speech";
    for bytes in artifact.blobs.values() {
        registry.push_blob(repo, bytes);
    }
    let put = registry
        .agent()
        .put(registry.url(&format!("/v2/{repo}/manifests/v1")))
        .header("content-type", MANIFEST_MEDIA_TYPE)
        .send(&artifact.manifest_bytes[..])
        .expect("PUT the manifest");
    assert_eq!(put.status(), 201, "the registry takes the manifest");
    let digest = put.headers()["docker-content-digest"].to_str().expect("a digest").to_owned();
    assert_eq!(digest, oci_digest(&artifact.digest()), "the registry names the artifact by our digest");

    // Read back by tag, as another client would: the same manifest bytes,
    // and every blob by the digest the bundle's index lists.
    let (status, headers, served) = registry.get(&format!("/v2/{repo}/manifests/v1"), MANIFEST_MEDIA_TYPE);
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").map(String::as_str), Some(MANIFEST_MEDIA_TYPE));
    assert_eq!(served, artifact.manifest_bytes, "the manifest comes back as pushed");
    let manifest = parse_manifest(&served).expect("a bundle's manifest");
    let back = packed_from(&manifest, |descriptor| {
        parse_digest(&descriptor.digest)?;
        let (status, _, bytes) = registry.get(&format!("/v2/{repo}/blobs/{}", descriptor.digest), "*/*");
        assert_eq!(status, 200, "blob {}", descriptor.digest);
        Ok::<_, mantle::oci::OciError>(bytes)
    })
    .expect("the bundle from the registry");
    assert_eq!(back.write().expect("writes"), packed.write().expect("writes"), "byte for byte");
    let bundle = back.open().expect("opens, signature and digests checked");
    assert!(bundle.signer.is_some());
    assert!(bundle.files().any(|(path, _)| Path::new(path).ends_with("vad.onnx")));

    // A node following the tag pulls what this other client pushed.
    let node = follower(&format!("oci://{}/{repo}:v1", registry.host()));
    wait_for_echo(&node);
}

const KEY: &str = "mk_acme_0123456789abcdef";

/// A node with tenant `acme` following `reference` over plain HTTP.
fn follower(reference: &str) -> mantle_tests::served::ServedNode {
    follower_with_env(reference, "", &[])
}

/// A node with tenant `acme` following `reference` with the `credentials`
/// lines in its follow table, and `env` set for it.
fn follower_with_env(reference: &str, credentials: &str, env: &[(&str, &str)]) -> mantle_tests::served::ServedNode {
    let config = format!(
        "[[tenant]]\nid = \"acme\"\nkey_sha256 = [\"{}\"]\n\n[[tenant.follow]]\nreference = \"{reference}\"\n\
         interval_ms = 200\ninsecure = true\n{credentials}",
        mantle_tests::served::key_sha256(KEY)
    );
    mantle_tests::served::ServedNode::with_config_env(&config, env)
}

/// Waits for the node to serve the bundle's echo module.
fn wait_for_echo(node: &mantle_tests::served::ServedNode) {
    let started = std::time::Instant::now();
    while node.post("/t/acme/echo", Some(KEY), b"hello").status != 200 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the node never served the bundle");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs `mantle` with `args`; its stdout, or a panic with its stderr.
fn mantle(args: &[&str]) -> String {
    let output = std::process::Command::new(mantle_tests::mantle_binary()).args(args).output().expect("mantle runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "mantle {args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// "uploaded N of M blobs" from `mantle push`'s output.
fn uploaded(pushed: &str) -> (usize, usize) {
    let line = pushed.lines().find_map(|l| l.trim().strip_prefix("uploaded ")).expect("an uploaded line");
    let mut words = line.split_whitespace();
    let uploaded = words.next().and_then(|n| n.parse().ok()).expect("a count");
    let total = words.nth(1).and_then(|n| n.parse().ok()).expect("a total");
    (uploaded, total)
}

#[test]
fn mantle_push_uploads_what_the_registry_lacks_and_mantle_pull_gives_the_file_back() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let host = registry.url("").trim_start_matches("http://").to_owned();
    let reference = |tag: &str| format!("oci://{host}/acme/speech:{tag}");

    // Version 1, then version 2, whose guest alone changed.
    let v1 = dir.path().join("v1.mbundle");
    std::fs::write(&v1, packed_bundle().write().expect("writes")).expect("write v1");
    let mut changed = packed_bundle()
        .open()
        .expect("opens")
        .files()
        .map(|(p, b)| (p.to_owned(), b.to_vec()))
        .collect::<BTreeMap<_, _>>();
    changed.insert("echo.wasm".to_owned(), std::fs::read(programs::HOSTILE).expect("another guest"));
    let v2_bundle = Bundle::from_files(changed, None).expect("version 2");
    let v2 = dir.path().join("v2.mbundle");
    std::fs::write(&v2, v2_bundle.pack(None).expect("packs")).expect("write v2");

    let first = mantle(&["push", v1.to_str().expect("a path"), &reference("1"), "--insecure"]);
    assert_eq!(uploaded(&first), (4, 4), "the config, mantle.toml, the model and the guest: {first}");
    let again = mantle(&["push", v1.to_str().expect("a path"), &reference("1"), "--insecure"]);
    assert_eq!(uploaded(&again), (0, 4), "the registry has every blob: {again}");
    let second = mantle(&["push", v2.to_str().expect("a path"), &reference("2"), "--insecure"]);
    assert_eq!(uploaded(&second), (2, 4), "the config and the guest, not the model: {second}");
    // The model went up once: a second client sees it by the digest the
    // bundle pins, without it having been sent again.
    let model = std::fs::read(model_path("silero-vad")).expect("the model");
    let model_blob = format!("/v2/acme/speech/blobs/{}", oci_digest(&mantle::types::Sha256::of(&model)));
    assert_eq!(registry.get(&model_blob, "*/*").0, 200);

    for (tag, original) in [("1", &v1), ("2", &v2)] {
        let pulled = dir.path().join(format!("pulled-{tag}.mbundle"));
        mantle(&["pull", &reference(tag), "-o", pulled.to_str().expect("a path"), "--insecure"]);
        assert_eq!(
            std::fs::read(&pulled).expect("the pulled file"),
            std::fs::read(original).expect("the pushed file"),
            "version {tag} comes back byte for byte"
        );
    }
}

/// Runs `mantle` with `args` and `env`; its exit code, stdout and stderr.
fn mantle_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(mantle_tests::mantle_binary())
        .args(args)
        .env_remove("MANTLE_REGISTRY_USERNAME")
        .env_remove("MANTLE_REGISTRY_PASSWORD")
        .env_remove("DOCKER_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("mantle runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

#[test]
fn a_registry_that_wants_credentials_takes_them_from_flags_the_environment_or_a_docker_config() {
    use base64::Engine;
    let registry = Registry::start_with_user("ci", "s3cret");
    let dir = tempfile::tempdir().expect("a temp dir");
    let bundle = dir.path().join("speech.mbundle");
    std::fs::write(&bundle, packed_bundle().write().expect("writes")).expect("write the bundle");
    let reference = format!("oci://{}/acme/speech:1", registry.host());
    let (bundle, pulled) = (bundle.to_str().expect("a path"), dir.path().join("pulled.mbundle"));
    let pulled = pulled.to_str().expect("a path");
    // An empty docker config directory, so that the tester's own logins
    // play no part.
    let empty = tempfile::tempdir().expect("a temp dir");
    let nobody = [("DOCKER_CONFIG", empty.path().to_str().expect("a path"))];

    let (code, _, stderr) = mantle_with_env(&["push", bundle, &reference, "--insecure"], &nobody);
    assert_eq!(code, Some(3), "anonymous: {stderr}");
    assert!(stderr.to_lowercase().contains("unauthorized") || stderr.contains("401"), "{stderr}");
    let wrong = ["push", bundle, &reference, "--insecure", "--username", "ci", "--password", "guess"];
    assert_eq!(mantle_with_env(&wrong, &nobody).0, Some(3), "a wrong password is refused");

    let flags = ["push", bundle, &reference, "--insecure", "--username", "ci", "--password", "s3cret"];
    let (code, stdout, stderr) = mantle_with_env(&flags, &nobody);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(uploaded(&stdout), (4, 4));

    let from_env = [("MANTLE_REGISTRY_USERNAME", "ci"), ("MANTLE_REGISTRY_PASSWORD", "s3cret"), nobody[0]];
    let (code, _, stderr) = mantle_with_env(&["pull", &reference, "-o", pulled, "--insecure"], &from_env);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(pulled).expect("pulled"), std::fs::read(bundle).expect("pushed"));

    // What `docker login` writes, in a directory DOCKER_CONFIG names.
    let docker = tempfile::tempdir().expect("a temp dir");
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret");
    let login = format!(r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#, registry.host());
    std::fs::write(docker.path().join("config.json"), login).expect("write config.json");
    std::fs::remove_file(pulled).expect("remove the pulled file");
    let logged_in = [("DOCKER_CONFIG", docker.path().to_str().expect("a path"))];
    let (code, _, stderr) = mantle_with_env(&["pull", &reference, "-o", pulled, "--insecure"], &logged_in);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(pulled).expect("pulled"), std::fs::read(bundle).expect("pushed"));

    // A node following the tag with the password in its environment.
    let node = follower_with_env(
        &reference,
        "username = \"ci\"\npassword_env = \"REGISTRY_PASSWORD\"\n",
        &[("REGISTRY_PASSWORD", "s3cret")],
    );
    wait_for_echo(&node);

    // And one reading it from a file, as a mounted Secret holds it: the
    // trailing newline is not part of the password.
    let secret = dir.path().join("registry-password");
    std::fs::write(&secret, "s3cret\n").expect("write the password file");
    let from_file = format!("username = \"ci\"\npassword_file = \"{}\"\n", secret.display());
    wait_for_echo(&follower_with_env(&reference, &from_file, &[]));
    // A file that is not there stops the node at start, naming it.
    let missing = dir.path().join("nowhere");
    let config = format!(
        "[[tenant]]\nid = \"acme\"\nkey_sha256 = [\"{}\"]\n\n[[tenant.follow]]\nreference = \"{reference}\"\n\
         insecure = true\nusername = \"ci\"\npassword_file = \"{}\"\n",
        mantle_tests::served::key_sha256(KEY),
        missing.display()
    );
    let config_path = dir.path().join("node.toml");
    std::fs::write(&config_path, config).expect("write node.toml");
    let data = dir.path().join("data");
    let (config_path, data) = (config_path.to_str().expect("a path"), data.to_str().expect("a path"));
    let serve = ["serve", "--listen", "127.0.0.1:0", "--config", config_path, "--data-dir", data];
    let (code, _, stderr) = mantle_with_env(&serve, &[]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("cannot read the password file") && stderr.contains("nowhere"), "{stderr}");
}

/// A token service as the distribution spec's bearer flow has one: it
/// takes `user` with `password` by basic auth and hands out a JWT, signed
/// with ES256 by a key whose self-signed certificate the registry trusts,
/// granting what was asked for. It counts the tokens it issued.
struct TokenService {
    realm: String,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const SERVICE: &str = "mantle-tests-registry";
const ISSUER: &str = "mantle-tests-tokens";

impl TokenService {
    /// Starts the service; also writes the certificate the registry is to
    /// trust at `cert_path`.
    fn start(user: &str, password: &str, cert_path: &Path) -> TokenService {
        use base64::Engine;
        use std::io::{BufRead, Write};
        let made = rcgen::generate_simple_self_signed(vec!["mantle-tests-tokens".to_owned()]).expect("a certificate");
        std::fs::write(cert_path, made.cert.pem()).expect("write the certificate");
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &made.signing_key.serialize_der(),
            &rng,
        )
        .expect("an ES256 key");
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::json!({
            "alg": "ES256", "typ": "JWT",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(made.cert.der())],
        });
        let header = b64url.encode(header.to_string());
        let expected =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let realm = format!("http://{}/token", listener.local_addr().expect("an address"));
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&issued);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let mut authorized = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("authorization")
                    {
                        authorized = value.trim() == expected;
                    }
                }
                // What each `scope=repository:NAME:ACTIONS` asks is granted.
                let query = request_line.split_whitespace().nth(1).and_then(|t| t.split_once('?')).map(|(_, q)| q);
                let access: Vec<Value> = query
                    .unwrap_or_default()
                    .split('&')
                    .filter_map(|pair| pair.strip_prefix("scope="))
                    .filter_map(|scope| {
                        let scope = scope.replace("%3A", ":").replace("%2F", "/").replace("%2C", ",");
                        let mut parts = scope.splitn(3, ':');
                        let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                    })
                    .collect();
                let answer = if authorized {
                    let now =
                        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
                    let claims = serde_json::json!({
                        "iss": ISSUER, "sub": "ci", "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
                        "iat": now, "jti": format!("token-{}", count.load(std::sync::atomic::Ordering::Relaxed)),
                        "access": access,
                    });
                    let signed = format!("{header}.{}", b64url.encode(claims.to_string()));
                    let signature = key.sign(&rng, signed.as_bytes()).expect("signs");
                    let token = format!("{signed}.{}", b64url.encode(signature.as_ref()));
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let body =
                        serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                };
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        TokenService { realm, issued }
    }

    fn issued(&self) -> usize {
        self.issued.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[test]
fn a_registry_that_hands_out_bearer_tokens_is_pushed_to_and_pulled_from_with_a_token() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cert = dir.path().join("tokens.pem");
    let tokens = TokenService::start("ci", "s3cret", &cert);
    let realm = tokens.realm.clone();
    let registry = Registry::start_with_auth(|_| {
        format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            cert.display()
        )
    });
    // Without a token, the registry says where to get one.
    let (status, headers, _) = registry.get("/v2/", "*/*");
    assert_eq!(status, 401);
    assert!(headers.get("www-authenticate").is_some_and(|h| h.starts_with("Bearer ")), "{headers:?}");

    let bundle = dir.path().join("speech.mbundle");
    std::fs::write(&bundle, packed_bundle().write().expect("writes")).expect("write the bundle");
    let (bundle, pulled) = (bundle.to_str().expect("a path"), dir.path().join("pulled.mbundle"));
    let reference = format!("oci://{}/acme/speech:1", registry.host());
    let empty = tempfile::tempdir().expect("a temp dir");
    let nobody = [("DOCKER_CONFIG", empty.path().to_str().expect("a path"))];
    let wrong = ["push", bundle, &reference, "--insecure", "--username", "ci", "--password", "guess"];
    assert_eq!(mantle_with_env(&wrong, &nobody).0, Some(3), "no token for a wrong password");
    assert_eq!(tokens.issued(), 0);

    let push = ["push", bundle, &reference, "--insecure", "--username", "ci", "--password", "s3cret"];
    let (code, stdout, stderr) = mantle_with_env(&push, &nobody);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(uploaded(&stdout), (4, 4));
    let pull = [
        "pull",
        &reference,
        "-o",
        pulled.to_str().expect("a path"),
        "--insecure",
        "--username",
        "ci",
        "--password",
        "s3cret",
    ];
    let (code, _, stderr) = mantle_with_env(&pull, &nobody);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&pulled).expect("pulled"), std::fs::read(bundle).expect("pushed"), "byte for byte");
    assert!(tokens.issued() >= 2, "each command got its token from the token service");
}

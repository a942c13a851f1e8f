//! The node's optional TLS listener, with a self-signed certificate made
//! for each test: a client that trusts it gets the same answers as over
//! plain HTTP; a client that does not, a plain-HTTP client and a client
//! that never says hello get nothing, and the node keeps serving. A
//! certificate the node cannot use stops it at start, naming the file.

use mantle_tests::served::{ServedNode, agent_trusting, example_module, model_tables, read_until_closed, tenant};
use mantle_tests::{run_mantle, sample};
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY: &str = "mk_tls_0123456789abcdef";
const MODEL: &str = "efficientnet-lite0";

/// A self-signed certificate for 127.0.0.1 and its key, as PEM files.
struct Identity {
    cert_der: Vec<u8>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

fn identity(dir: &Path, name: &str) -> Identity {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("a self-signed certificate");
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, made.cert.pem()).expect("write the certificate");
    std::fs::write(&key_path, made.signing_key.serialize_pem()).expect("write the key");
    Identity { cert_der: made.cert.der().to_vec(), cert_path, key_path }
}

fn config(cert: &Path, key: &str, extra_node: &str) -> String {
    format!(
        "[node]\n{extra_node}\n[node.tls]\ncert_path = '{}'\nkey_path = '{key}'\n\n{}{}",
        cert.display(),
        model_tables(&[MODEL]),
        tenant("alpha", KEY, &[MODEL], &example_module("image-classify", "image-classify", &[MODEL]))
    )
}

fn classify(served: &ServedNode) -> String {
    let reply = served.post("/t/alpha/image-classify", Some(KEY), &sample("chelsea.png"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["top"][0]["label"].as_str().expect("a label").to_owned()
}

#[test]
fn a_client_that_trusts_the_nodes_certificate_is_served_over_https_and_no_one_else() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let node_identity = identity(dir.path(), "node");
    let key_path = node_identity.key_path.display().to_string();
    let mut served =
        ServedNode::with_config(&config(&node_identity.cert_path, &key_path, "header_read_timeout_ms = 500"));
    assert!(served.base().starts_with("https://127.0.0.1:"), "the banner names {}", served.base());

    // A client that trusts only the public web's authorities refuses the
    // node: the certificate really is the one served.
    let stranger = ureq::get(format!("{}/healthz", served.base())).call();
    let refused = stranger.expect_err("a self-signed certificate is not trusted by default").to_string();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    served.trust_only(&node_identity.cert_der);
    assert_eq!(classify(&served), "tiger cat");

    // Plain HTTP on the TLS port gets no HTTP answer, only a TLS alert.
    let plain = read_until_closed(served.connect_raw(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    assert!(!plain.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&plain));

    // A client that connects and never starts the handshake is cut off
    // after the header read timeout, while others are served.
    let silent = served.connect_raw(b"");
    assert_eq!(classify(&served), "tiger cat");
    let nothing = read_until_closed(silent);
    assert!(nothing.is_empty(), "{nothing:?}");

    // A certificate for the same name from another key is not the node's.
    let impostor = identity(dir.path(), "impostor");
    let fooled = agent_trusting(Some(&impostor.cert_der)).get(format!("{}/healthz", served.base())).call();
    let refused = fooled.expect_err("a client trusting another certificate was answered").to_string();
    assert!(refused.contains("BadSignature") || refused.contains("UnknownIssuer"), "{refused}");

    assert_eq!(classify(&served), "tiger cat");
}

#[test]
fn a_certificate_the_node_cannot_use_stops_it_at_start_naming_the_file() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let node_identity = identity(dir.path(), "node");
    let other = identity(dir.path(), "other");
    let not_pem = dir.path().join("not-pem.crt");
    std::fs::write(&not_pem, "this is no certificate\n").expect("write");
    let missing = dir.path().join("missing.crt");
    let node_key = node_identity.key_path.display().to_string();
    let cases = [
        ("a missing certificate", config(&missing, &node_key, ""), "missing.crt"),
        ("a file with no certificate", config(&not_pem, &node_key, ""), "not-pem.crt holds no PEM certificate"),
        (
            "the key of another certificate",
            config(&node_identity.cert_path, &other.key_path.display().to_string(), ""),
            "cannot be used together",
        ),
        (
            "a certificate where the key belongs",
            config(&node_identity.cert_path, &node_identity.cert_path.display().to_string(), ""),
            "cannot read the TLS private key",
        ),
    ];
    for (what, text, names) in cases {
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).expect("write the configuration");
        let data = tempfile::tempdir().expect("a temp dir");
        let args = ["serve", "--listen", "127.0.0.1:0", "--config"].map(std::ffi::OsStr::new);
        let args = [&args[..], &[path.as_os_str(), "--data-dir".as_ref(), data.path().as_os_str()]].concat();
        let finished = run_mantle(&args, b"", Duration::from_secs(120));
        assert_eq!(finished.code, Some(3), "{what}: {}", finished.stderr);
        assert!(finished.stderr.contains(names), "{what}: {}", finished.stderr);
        assert!(finished.stdout.is_empty(), "{what}: it listened: {}", String::from_utf8_lossy(&finished.stdout));
    }
}

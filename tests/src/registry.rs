//! A real OCI registry for the tests: the CNCF distribution server, as
//! Debian's `docker-registry` package ships it, on a loopback port with
//! storage of its own.

use mantle::oci::oci_digest;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `docker-registry` program. `.ci/run` installs it; on a machine
/// without it, the tests install Debian's package themselves when they can
/// (as root with apt-get), as they install `tritonclient` into a venv.
fn docker_registry() -> PathBuf {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let installed = PathBuf::from("/usr/bin/docker-registry");
            let on_path = Command::new("docker-registry").arg("--version").output().is_ok_and(|o| o.status.success());
            if on_path {
                return PathBuf::from("docker-registry");
            }
            // SAFETY: geteuid has no preconditions and cannot fail.
            let root = unsafe { libc::geteuid() } == 0;
            assert!(
                root && std::path::Path::new("/usr/bin/apt-get").exists(),
                "the registry tests need Debian's docker-registry package: apt-get install docker-registry"
            );
            for args in [&["update", "-qq"][..], &["install", "-y", "-qq", "docker-registry"]] {
                let status = Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .status()
                    .expect("apt-get runs");
                assert!(status.success(), "apt-get {args:?} failed");
            }
            installed
        })
        .clone()
}

/// A distribution registry on a loopback port, with its own storage,
/// stopped when dropped.
pub struct Registry {
    child: Child,
    base: String,
    _storage: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let storage = tempfile::tempdir().expect("a temp dir");
        // A free port: bound, read and released; the registry binds it next.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let config = storage.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.path().join("data").display()
            ),
        )
        .expect("write the registry's configuration");
        let child = Command::new(docker_registry())
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry runs");
        let registry = Registry { child, base: format!("http://127.0.0.1:{port}"), _storage: storage };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if registry.agent().get(format!("{}/v2/", registry.base)).call().is_ok_and(|r| r.status() == 200) {
                return registry;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the registry did not answer /v2/ within 20 s");
    }

    /// The URL of `path` on the registry.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into()
    }

    /// Uploads a blob in one request, as the distribution spec's monolithic
    /// upload: a POST that opens a session, then a PUT with the digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) {
        let digest = oci_digest(&mantle::types::Sha256::of(bytes));
        let agent = self.agent();
        let session = agent.post(format!("{}/v2/{repo}/blobs/uploads/", self.base)).send_empty().expect("POST");
        assert_eq!(session.status(), 202, "opening an upload");
        let location = session.headers()["location"].to_str().expect("a location").to_owned();
        let location = if location.starts_with("http") { location } else { format!("{}{location}", self.base) };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = agent
            .put(format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .send(bytes)
            .expect("PUT");
        assert_eq!(put.status(), 201, "uploading {digest}");
    }

    pub fn get(&self, path: &str, accept: &str) -> (u16, BTreeMap<String, String>, Vec<u8>) {
        let mut response =
            self.agent().get(format!("{}{path}", self.base)).header("accept", accept).call().expect("GET");
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let mut body = Vec::new();
        response.body_mut().as_reader().read_to_end(&mut body).expect("the body");
        (response.status().as_u16(), headers, body)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! A real OCI registry for the tests: the CNCF distribution server, as
//! Debian's `docker-registry` package ships it, on a loopback port with
//! storage of its own.

use mantle::oci::oci_digest;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `docker-registry` program, the distribution server.
fn docker_registry() -> PathBuf {
    crate::debian::program("docker-registry", "docker-registry")
}

/// A distribution registry on a loopback port, with its own storage,
/// stopped when dropped.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    storage: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with_auth(|_| String::new())
    }

    /// A registry that takes only `user` with `password`, by HTTP basic
    /// auth against an htpasswd file, as the distribution server does it.
    pub fn start_with_user(user: &str, password: &str) -> Registry {
        let hash = bcrypt::hash(password, 5).expect("bcrypt");
        Self::start_with_auth(|storage| {
            let path = storage.join("htpasswd");
            std::fs::write(&path, format!("{user}:{hash}\n")).expect("write the htpasswd file");
            format!("auth:\n  htpasswd:\n    realm: mantle-tests\n    path: {}\n", path.display())
        })
    }

    /// A registry with the `auth:` section of its configuration that
    /// `auth` writes, given the registry's own directory for its files.
    pub fn start_with_auth(auth: impl FnOnce(&std::path::Path) -> String) -> Registry {
        let storage = tempfile::tempdir().expect("a temp dir");
        let auth = auth(storage.path());
        // A free port: bound, read and released; the registry binds it next.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        std::fs::write(
            storage.path().join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth}",
                storage.path().join("data").display()
            ),
        )
        .expect("write the registry's configuration");
        let mut registry = Registry { child: None, port, storage };
        registry.restart();
        registry
    }

    /// Starts the registry again, on the same port with the same storage,
    /// after [`Registry::kill`].
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(docker_registry())
            .arg("serve")
            .arg(self.storage.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry runs");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            // 401 from a registry that wants credentials: it is up.
            if self.agent().get(self.url("/v2/")).call().is_ok_and(|r| [200, 401].contains(&r.status().as_u16())) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the registry did not answer /v2/ within 20 s");
    }

    /// Kills the registry with SIGKILL, mid-answer if it is answering.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `HOST:PORT`, as a reference names the registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The file the registry serves the blob of `digest` (`sha256:...`)
    /// from, in the distribution server's filesystem layout.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let blobs = self.storage.path().join("data/docker/registry/v2/blobs/sha256");
        blobs.join(&hex[..2]).join(hex).join("data")
    }

    /// The URL of `path` on the registry.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
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
        let session = agent.post(self.url(&format!("/v2/{repo}/blobs/uploads/"))).send_empty().expect("POST");
        assert_eq!(session.status(), 202, "opening an upload");
        let location = session.headers()["location"].to_str().expect("a location").to_owned();
        let location = if location.starts_with("http") { location } else { self.url(&location) };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = agent
            .put(format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .send(bytes)
            .expect("PUT");
        assert_eq!(put.status(), 201, "uploading {digest}");
    }

    pub fn get(&self, path: &str, accept: &str) -> (u16, BTreeMap<String, String>, Vec<u8>) {
        let mut response = self.agent().get(self.url(path)).header("accept", accept).call().expect("GET");
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
        self.kill();
    }
}

/// A TCP relay on a loopback port to an upstream server, passing what the
/// upstream answers on at a bounded rate: a registry far away, so that a
/// test can act in the middle of a pull. It counts the bytes it passed on.
pub struct SlowRelay {
    address: std::net::SocketAddr,
    relayed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowRelay {
    pub fn start(upstream: &str, bytes_per_second: u64) -> SlowRelay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let address = listener.local_addr().expect("an address");
        let relayed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let (counted, stopping) = (Arc::clone(&relayed), Arc::clone(&stop));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
                let (mut to_server, mut from_client) =
                    (server.try_clone().expect("clone"), client.try_clone().expect("clone"));
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_server);
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                });
                let counted = Arc::clone(&counted);
                std::thread::spawn(move || {
                    use std::io::Write;
                    let (mut server, mut client) = (server, client);
                    // Chunks of a hundredth of a second's worth.
                    let mut chunk = vec![0; (bytes_per_second / 100).max(1) as usize];
                    loop {
                        match server.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if client.write_all(&chunk[..n]).is_err() {
                                    break;
                                }
                                counted.fetch_add(n as u64, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        SlowRelay { address, relayed, stop }
    }

    /// `HOST:PORT` of the relay.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    /// Bytes passed on from the upstream so far.
    pub fn relayed(&self) -> u64 {
        self.relayed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accepting thread so that it sees the stop.
        let _ = std::net::TcpStream::connect(self.address);
    }
}

//! A real `mantle serve` process on a free loopback port, an HTTP client
//! for it, and the Python `tritonclient` the KServe tests drive it with.
//! Every wait is bounded, and the process is killed when dropped.

use crate::{mantle_binary, model_path, repo_root, target_dir};
use mantle::examples::EXAMPLES;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use ureq::http;

/// How long a node may take from spawning to listening.
const START_LIMIT: Duration = Duration::from_secs(120);
/// How long one HTTP exchange may take.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

/// An HTTP client that hands back every status as an answer, bounded in
/// time. Over TLS it trusts `root_der` alone when given, the public web's
/// authorities otherwise.
pub fn agent_trusting(root_der: Option<&[u8]>) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(REQUEST_LIMIT));
    if let Some(der) = root_der {
        let root = ureq::tls::Certificate::from_der(der).to_owned();
        let roots = ureq::tls::RootCerts::Specific(Arc::new(vec![root]));
        config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
    }
    config.build().into()
}

/// Everything the node sends on `stream` until it closes the connection,
/// which it must do within the stream's read timeout.
pub fn read_until_closed(mut stream: std::net::TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "the node kept the connection open: {e}");
    }
    answer
}

/// A running `mantle serve`.
pub struct ServedNode {
    child: Child,
    base: String,
    /// Lines of stdout after the first, as they come.
    stdout: Mutex<Receiver<String>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    agent: ureq::Agent,
    /// Its configuration and store, removed after it stops.
    dirs: Vec<tempfile::TempDir>,
}

/// An HTTP answer, whatever its status.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `error` message of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error message in {}", self.text())).to_owned()
    }
}

impl ServedNode {
    /// Serves the node that `config` (TOML) describes, with a fresh store.
    pub fn with_config(config: &str) -> ServedNode {
        let data = tempfile::tempdir().expect("a temp dir");
        let mut node = Self::with_config_in(config, data.path());
        node.dirs.push(data);
        node
    }

    /// Serves the node that `config` describes, with its store in
    /// `data_dir`, which outlives the node.
    pub fn with_config_in(config: &str, data_dir: &Path) -> ServedNode {
        Self::configured(config, data_dir, None)
    }

    /// Serves the node that `config` describes, logging at `MANTLE_LOG`
    /// level `filter`.
    pub fn with_config_logging(config: &str, filter: &str) -> ServedNode {
        let data = tempfile::tempdir().expect("a temp dir");
        let mut node = Self::configured(config, data.path(), Some(filter));
        node.dirs.push(data);
        node
    }

    /// Serves the node that `config` describes, with a fresh store and
    /// these environment variables set for it.
    pub fn with_config_env(config: &str, env: &[(&str, &str)]) -> ServedNode {
        let data = tempfile::tempdir().expect("a temp dir");
        let mut node = Self::configured_with(config, data.path(), None, env);
        node.dirs.push(data);
        node
    }

    fn configured(config: &str, data_dir: &Path, log: Option<&str>) -> ServedNode {
        Self::configured_with(config, data_dir, log, &[])
    }

    fn configured_with(config: &str, data_dir: &Path, log: Option<&str>, env: &[(&str, &str)]) -> ServedNode {
        Self::listening_on("127.0.0.1:0", config, data_dir, log, env)
    }

    /// Serves the node that `config` describes on `listen` (`ADDR:PORT`;
    /// port 0 picks one), with its store in `data_dir`, which outlives the
    /// node: a member of a fleet, started again at the same address.
    pub fn listening_on(
        listen: &str,
        config: &str,
        data_dir: &Path,
        log: Option<&str>,
        env: &[(&str, &str)],
    ) -> ServedNode {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config).expect("write the configuration");
        let args = [
            "--listen".as_ref(),
            listen.as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ];
        let mut node = Self::start(&args, log, env);
        node.dirs.push(dir);
        node
    }

    /// Serves the bundled examples as `mantle serve` does with no
    /// configuration, from the repository root.
    pub fn demo() -> ServedNode {
        let data = tempfile::tempdir().expect("a temp dir");
        let mut node = Self::demo_in_with_env(data.path(), &[]);
        node.dirs.push(data);
        node
    }

    /// The bundled examples, with their store in `data_dir`, which
    /// outlives the node, and these environment variables set for it.
    pub fn demo_in_with_env(data_dir: &Path, env: &[(&str, &str)]) -> ServedNode {
        Self::start(
            &["--listen".as_ref(), "127.0.0.1:0".as_ref(), "--data-dir".as_ref(), data_dir.as_os_str()],
            None,
            env,
        )
    }

    fn start(args: &[&std::ffi::OsStr], log: Option<&str>, env: &[(&str, &str)]) -> ServedNode {
        let mut command = Command::new(mantle_binary());
        if let Some(filter) = log {
            command.env("MANTLE_LOG", filter);
        }
        command.envs(env.iter().copied());
        let mut child = command
            .current_dir(repo_root())
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mantle serve starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        // Drained all along: a node logs every request, and a full pipe
        // would block it.
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut chunk) {
                sink.lock().expect("stderr buffer").extend_from_slice(&chunk[..n]);
            }
        });
        let stdout_pipe = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout_pipe).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let agent = agent_trusting(None);
        let mut node =
            ServedNode { child, base: String::new(), stdout: Mutex::new(lines), stderr, agent, dirs: Vec::new() };
        let first = node.next_stdout_line(START_LIMIT);
        let base = first
            .strip_prefix("mantle listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}; stderr: {}", node.stderr()));
        node.base = base.to_owned();
        node
    }

    /// Sets the largest file the node may write, as `ulimit -f` would have
    /// at its start: a write past it fails as on a full disk.
    pub fn limit_file_size(&self, bytes: u64) {
        let limit = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: prlimit only reads `limit`; the old limit is not asked for.
        let set =
            unsafe { libc::prlimit(self.child.id() as libc::pid_t, libc::RLIMIT_FSIZE, &limit, std::ptr::null_mut()) };
        assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    /// From now on, talks to the node over TLS trusting only the
    /// certificate `cert_der`: a node with `[node.tls]` and a self-signed
    /// certificate.
    pub fn trust_only(&mut self, cert_der: &[u8]) {
        self.agent = agent_trusting(Some(cert_der));
    }

    /// The next line the node prints on stdout.
    pub fn next_stdout_line(&self, limit: Duration) -> String {
        match self.stdout.lock().expect("stdout lines").recv_timeout(limit) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("mantle printed nothing within {limit:?}: {}", self.stderr()),
            Err(RecvTimeoutError::Disconnected) => panic!("mantle closed stdout; stderr: {}", self.stderr()),
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://` when the node serves TLS.
    /// The node process's resident memory now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("the node's status");
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in the node's status");
        kib * 1024
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `host:port`, as `tritonclient` takes it.
    pub fn host_port(&self) -> &str {
        self.base.split_once("://").map_or(&self.base, |(_, host_port)| host_port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr buffer")).into_owned()
    }

    /// Waits until the node has logged `needle`.
    pub fn wait_for_stderr(&self, needle: &str, limit: Duration) {
        let started = Instant::now();
        while !self.stderr().contains(needle) {
            assert!(started.elapsed() < limit, "mantle did not log {needle:?} within {limit:?}: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `method path` with `body`, presenting `key` if given.
    pub fn send(&self, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> Reply {
        self.send_with(method, path, key, &[], body)
    }

    /// Sends `method path` with extra `headers` and `body`.
    pub fn send_with(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut request = http::Request::builder().method(method).uri(self.url(path));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.to_vec()).expect("a valid request");
        self.exchange(request)
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> Reply {
        let mut request = http::Request::get(self.url(path));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        self.exchange(request.body(()).expect("a valid request"))
    }

    pub fn post(&self, path: &str, key: Option<&str>, body: &[u8]) -> Reply {
        self.send("POST", path, key, body)
    }

    /// Sends `body` in chunks with no `Content-Length`.
    pub fn post_chunked(&self, path: &str, key: Option<&str>, body: &[u8]) -> Reply {
        let mut reader = body;
        let mut request = http::Request::post(self.url(path));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(ureq::SendBody::from_reader(&mut reader)).expect("a valid request");
        self.exchange(request)
    }

    /// Writes `request` to a new connection byte for byte, for requests
    /// no well-behaved client would send, and reads the answer until the
    /// node closes the connection (send `Connection: close`). `None` when
    /// the node closed or reset the connection without an answer.
    pub fn raw(&self, request: &[u8]) -> Option<Reply> {
        let mut stream = std::net::TcpStream::connect(self.host_port()).expect("connect to the node");
        stream.set_read_timeout(Some(REQUEST_LIMIT)).expect("a read timeout");
        // The node may answer and close before it has read everything.
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && answer.is_empty() => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("reading a raw answer: {e}"),
        }
        if answer.is_empty() {
            return None;
        }
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head");
        let head = std::str::from_utf8(&answer[..split]).expect("an ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
        let mut headers = http::HeaderMap::new();
        for line in lines {
            let (name, value) = line.split_once(':').expect("a header line");
            let name = http::HeaderName::try_from(name.trim()).expect("a header name");
            headers.append(name, http::HeaderValue::try_from(value.trim()).expect("a header value"));
        }
        Some(Reply { status, headers, body: answer[split + 4..].to_vec() })
    }

    /// A connection of its own to the node, on which `first_bytes` have
    /// been sent and nothing more; for [`read_until_closed`].
    pub fn connect_raw(&self, first_bytes: &[u8]) -> std::net::TcpStream {
        let mut stream = std::net::TcpStream::connect(self.host_port()).expect("connect to the node");
        stream.write_all(first_bytes).expect("send to the node");
        // Far longer than any limit of the node's: a read that ends by
        // this timeout means the node kept the connection open.
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("a read timeout");
        stream
    }

    fn exchange(&self, request: http::Request<impl ureq::AsSendBody>) -> Reply {
        let what = format!("{} {}", request.method(), request.uri());
        self.try_exchange(request).unwrap_or_else(|e| panic!("{what} failed: {e}; stderr: {}", self.stderr()))
    }

    /// Sends `method path` with `body`, presenting `key` if given; an
    /// error when no answer came, as from a node that stopped listening.
    pub fn try_send(&self, method: &str, path: &str, key: Option<&str>, body: &[u8]) -> Result<Reply, ureq::Error> {
        let mut request = http::Request::builder().method(method).uri(self.url(path));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        self.try_exchange(request.body(body.to_vec()).expect("a valid request"))
    }

    fn try_exchange(&self, request: http::Request<impl ureq::AsSendBody>) -> Result<Reply, ureq::Error> {
        let mut response = self.agent.run(request)?;
        let body = response.body_mut().with_config().limit(256 << 20).read_to_vec()?;
        Ok(Reply { status: response.status().as_u16(), headers: response.headers().clone(), body })
    }

    /// The node's metrics now.
    pub fn metrics(&self) -> Metrics {
        let reply = self.get("/metrics", None);
        assert_eq!(reply.status, 200, "{}", reply.text());
        Metrics::parse(&reply.text())
    }

    /// Polls the metrics until `ready` holds, for at most `limit`.
    pub fn wait_for_metrics(&self, limit: Duration, ready: impl Fn(&Metrics) -> bool) -> Metrics {
        let started = Instant::now();
        loop {
            let metrics = self.metrics();
            if ready(&metrics) {
                return metrics;
            }
            assert!(started.elapsed() < limit, "the metrics did not reach the expected state within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, as an operator or a service manager stops a node.
    pub fn terminate(&self) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) with a valid signal number has no memory effects.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM reaches mantle");
    }

    /// Kills the process with SIGKILL, as a power cut would stop it, and
    /// waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for mantle") {
                return status.code();
            }
            assert!(started.elapsed() < limit, "mantle did not exit within {limit:?}; stderr: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scrape of `/metrics`: every sample by metric name and labels.
pub struct Metrics {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line}"));
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("a sample value: {line}"));
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("a label: {line}"));
                        (key.to_owned(), value.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels, value)
            })
            .collect();
        Metrics { samples }
    }

    /// Every series of `name`: its labels and its value.
    pub fn series(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples.iter().filter(|(n, _, _)| n == name).map(|(_, labels, value)| (labels, *value)).collect()
    }

    /// The sample of `name` whose labels include `labels`, or 0 when there
    /// is none yet.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v)))
            .map(|(_, _, value)| *value)
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} names {} series", matching.len());
        matching.first().copied().unwrap_or(0.0)
    }
}

/// A packed, unsigned bundle `name` at version 1 with one module, `id`,
/// whose component is `wasm` and whose `[[module]]` table goes on with
/// `module_extra` (limits, models).
pub fn bundle_of(name: &str, id: &str, wasm: &[u8], module_extra: &str) -> Vec<u8> {
    let manifest = format!(
        "[bundle]\nname = \"{name}\"\nversion = \"1\"\n\n[[module]]\nid = \"{id}\"\nfile = \"{id}.wasm\"\n{module_extra}\n"
    );
    let files =
        BTreeMap::from([("mantle.toml".to_owned(), manifest.into_bytes()), (format!("{id}.wasm"), wasm.to_vec())]);
    let bundle = mantle::bundle::Bundle::from_files(files, None).unwrap_or_else(|e| panic!("a test bundle: {e}"));
    bundle.pack(None).unwrap_or_else(|e| panic!("packing a test bundle: {e}"))
}

/// The hex SHA-256 of an API key, as a configuration stores it.
pub fn key_sha256(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A `[[tenant]]` table with the tenant's key and grants; `extra` is more
/// of the table (limits, modules), written after it.
pub fn tenant(id: &str, key: &str, grants: &[&str], extra: &str) -> String {
    format!("[[tenant]]\nid = \"{id}\"\nkey_sha256 = [\"{}\"]\ngrants = {grants:?}\n{extra}\n", key_sha256(key))
}

/// A `[[tenant.module]]` table for a bundled example granted `models`.
pub fn example_module(id: &str, example: &str, models: &[&str]) -> String {
    format!("[[tenant.module]]\nid = \"{id}\"\nexample = \"{example}\"\nmodels = {models:?}\n\n")
}

/// A `[[tenant.module]]` table for a test program with a deadline.
pub fn program_module(id: &str, wasm: &str, deadline_ms: u64) -> String {
    format!("[[tenant.module]]\nid = \"{id}\"\npath = '{wasm}'\nlimits = {{ deadline_ms = {deadline_ms} }}\n\n")
}

/// `[[model]]` tables for the repository's example models, pinned as the
/// bundled examples pin them.
pub fn model_tables(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            let example =
                EXAMPLES.iter().find(|e| e.model == *name).unwrap_or_else(|| panic!("no example model {name}"));
            let pins: Vec<String> = example.pinned_dims.iter().map(|(dim, size)| format!("{dim} = {size}")).collect();
            format!(
                "[[model]]\nname = \"{name}\"\npath = '{}'\npin = {{ {} }}\n\n",
                model_path(name).display(),
                pins.join(", ")
            )
        })
        .collect()
}

/// A Python with the packages of `tests/python/requirements.txt`, in a
/// virtual environment under the target directory, made on first use and
/// remade when the requirements change.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| python_with("tests/python/requirements.txt", "python-venv"))
}

/// A Python with the packages of `deploy/requirements.txt`: what the
/// Kubernetes manifests are checked with.
pub fn deploy_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| python_with("deploy/requirements.txt", "deploy-venv"))
}

/// The virtual environment `venv` under the target directory, with the
/// packages of `requirements` (relative to the repository root), made or
/// remade when they changed.
pub(crate) fn python_with(requirements: &str, venv: &str) -> PathBuf {
    let requirements = repo_root().join(requirements);
    let wanted = std::fs::read_to_string(&requirements).unwrap_or_else(|e| panic!("{}: {e}", requirements.display()));
    let venv = target_dir().join(venv);
    let python = venv.join("bin/python");
    let stamp = venv.join("mantle-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return python;
    }
    let run = |command: &mut Command| {
        let status = command.status().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        assert!(status.success(), "{command:?} failed");
    };
    let interpreter = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    run(Command::new(interpreter).args(["-m", "venv", "--clear"]).arg(&venv));
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
        .arg(&requirements));
    std::fs::write(&stamp, wanted).expect("write the venv stamp");
    python
}

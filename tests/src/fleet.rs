//! What stands around a fleet of nodes, for real: HAProxy in front of
//! them, health-checking `/readyz`, and Prometheus scraping them through a
//! `file_sd` target file. Each runs from Debian's package on loopback with
//! files of its own, and is stopped when dropped.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on `ip`: bound, read and released; the caller binds it next.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Polls `url` until it answers 200, for at most `limit`.
fn wait_until_answering(url: &str, limit: Duration, what: &str) {
    let agent = agent();
    let started = Instant::now();
    while started.elapsed() < limit {
        if agent.get(url).call().is_ok_and(|r| r.status() == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not answer {url} within {limit:?}");
}

/// HAProxy balancing over `servers`, health-checking `/readyz` every
/// 100 ms and retrying a request on another server only when the
/// connection to the first one failed.
pub struct Haproxy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// `servers` are `(name, "ADDR:PORT")`.
    pub fn start(servers: &[(String, String)]) -> Haproxy {
        let program = crate::debian::program("haproxy", "haproxy");
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port("127.0.0.1");
        let mut config = format!(
            "global\n  maxconn 4096\n  stats socket {} mode 600 level admin\n\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  \
             timeout server 30s\n  timeout http-keep-alive 10s\n  retries 3\n  retry-on conn-failure\n  \
             option redispatch 1\n\n\
             frontend fleet\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\n\
             backend nodes\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  \
             default-server inter 100ms fall 1 rise 1\n",
            dir.path().join("admin.sock").display()
        );
        for (name, address) in servers {
            config.push_str(&format!("  server {name} {address} check\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new(program)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy runs");
        let haproxy = Haproxy { child, port, dir };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "haproxy did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        haproxy
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The counters HAProxy keeps for server `name` of the backend (`show
    /// stat`), by their CSV names: `stot`, `eresp`, `srv_abrt`...
    pub fn server_stats(&self, name: &str) -> HashMap<String, u64> {
        use std::io::{Read, Write};
        let mut socket = std::os::unix::net::UnixStream::connect(self.dir.path().join("admin.sock"))
            .expect("haproxy's stats socket");
        socket.write_all(b"show stat\n").expect("ask haproxy");
        let mut csv = String::new();
        socket.read_to_string(&mut csv).expect("read haproxy's stats");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
        let row = lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|row| row.first() == Some(&"nodes") && row.get(1) == Some(&name))
            .unwrap_or_else(|| panic!("no server {name} in haproxy's stats: {csv}"));
        header.iter().zip(row).filter_map(|(key, value)| Some(((*key).to_owned(), value.parse().ok()?))).collect()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus scraping `targets` every 500 ms, found through a `file_sd`
/// target file.
pub struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// `targets` are `"ADDR:PORT"`; each is a Prometheus instance.
    pub fn start(targets: &[String]) -> Prometheus {
        let program = crate::debian::program("prometheus", "prometheus");
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port("127.0.0.1");
        let sd = dir.path().join("nodes.json");
        let groups = serde_json::json!([{ "targets": targets, "labels": { "fleet": "test" } }]);
        std::fs::write(&sd, groups.to_string()).expect("write the targets");
        let config = format!(
            "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n  evaluation_interval: 500ms\n\
             scrape_configs:\n  - job_name: mantle\n    file_sd_configs:\n      - files: ['{}']\n        \
             refresh_interval: 1s\n",
            sd.display()
        );
        let path = dir.path().join("prometheus.yml");
        std::fs::write(&path, config).expect("write prometheus.yml");
        let child = Command::new(program)
            .arg(format!("--config.file={}", path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs");
        let prometheus = Prometheus { child, port, _dir: dir };
        wait_until_answering(&prometheus.url("/-/ready"), Duration::from_secs(60), "prometheus");
        prometheus
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Evaluates `promql` now, through the HTTP API: the result's
    /// `data.result`, or the error Prometheus gave.
    pub fn query(&self, promql: &str) -> Result<serde_json::Value, String> {
        let mut response = agent()
            .get(self.url("/api/v1/query"))
            .query("query", promql)
            .call()
            .map_err(|e| format!("querying prometheus: {e}"))?;
        let body: serde_json::Value = response.body_mut().read_json().map_err(|e| format!("not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{promql}: {}", body["error"]));
        }
        Ok(body["data"]["result"].clone())
    }

    /// The one value of an instant vector or scalar query, or `None` when
    /// the vector is empty.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).unwrap_or_else(|e| panic!("{e}"));
        let sample = match result.as_array() {
            Some(vector) => vector.first()?.get("value")?.clone(),
            None => result,
        };
        sample.get(1)?.as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

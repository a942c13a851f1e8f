//! A fleet, with the tools users already run: three nodes on their own
//! loopback addresses following one tag in a real registry, HAProxy in
//! front health-checking `/readyz`, Prometheus scraping every node through
//! `file_sd`, and steady load through HAProxy with every answer checked.
//! The tag moves, every node is restarted with SIGTERM one by one, a fresh
//! node joins, and one is killed with SIGKILL and brought back.

use super::deploy::{OPERATOR_TOKEN, TENANT_KEY};
use super::follow::{greeter, push};
use mantle_tests::fleet::{Haproxy, Prometheus, free_port};
use mantle_tests::registry::Registry;
use mantle_tests::served::{ServedNode, key_sha256};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often each node looks the tag up.
const POLL: Duration = Duration::from_secs(2);
/// Workers of the load generator, each on its own keep-alive connection.
const WORKERS: usize = 12;

fn node_config(reference: &str) -> String {
    format!(
        "[node]\nadmin_token_sha256 = \"{}\"\ndrain_ms = 1000\nshutdown_grace_ms = 10000\n\n\
         [[tenant]]\nid = \"acme\"\nkey_sha256 = [\"{}\"]\n\n\
         [[tenant.follow]]\nreference = \"{reference}\"\ninterval_ms = {}\ninsecure = true\n",
        key_sha256(OPERATOR_TOKEN),
        key_sha256(TENANT_KEY),
        POLL.as_millis()
    )
}

/// A member of the fleet: its address, its store, and the running process
/// while there is one.
struct Member {
    name: String,
    address: String,
    data: tempfile::TempDir,
    config: String,
    node: Option<ServedNode>,
}

impl Member {
    /// A node with an empty store listening on `listen` (`IP:PORT`; port 0
    /// picks one).
    fn start(listen: &str, config: &str, name: String) -> Member {
        let data = tempfile::tempdir().expect("a temp dir");
        let node = ServedNode::listening_on(listen, config, data.path(), None, &[]);
        let address = node.host_port().to_owned();
        Member { name, address, data, config: config.to_owned(), node: Some(node) }
    }

    fn node(&self) -> &ServedNode {
        self.node.as_ref().expect("the node runs")
    }

    /// Starts the node again at the same address with the same store, and
    /// waits until it is ready.
    fn restart(&mut self) {
        let node = ServedNode::listening_on(&self.address, &self.config, self.data.path(), None, &[]);
        assert_eq!(node.get("/readyz", None).status, 200);
        self.node = Some(node);
    }
}

/// One request of the load: when it was sent, how long it took, and what
/// was wrong with its answer, if anything.
struct Sent {
    id: String,
    at: Instant,
    took: Duration,
    problem: Option<String>,
}

/// Steady load through HAProxy: `WORKERS` threads, paced to `rate`
/// requests per second in all, each checking every answer's bytes.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
    /// Greetings an answer may carry: the versions the fleet may serve.
    greetings: Arc<RwLock<Vec<String>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, rate: f64, greetings: &[&str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let greetings = Arc::new(RwLock::new(greetings.iter().map(|g| (*g).to_owned()).collect()));
        let interval = Duration::from_secs_f64(WORKERS as f64 / rate);
        let counter = Arc::new(AtomicU64::new(0));
        let workers = (0..WORKERS)
            .map(|worker| {
                let (stop, sent, greetings, counter) =
                    (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&greetings), Arc::clone(&counter));
                let url = format!("{base}/t/acme/greet");
                // Spread the workers' first requests over one interval.
                let first = Instant::now() + interval.mul_f64(worker as f64 / WORKERS as f64);
                std::thread::spawn(move || {
                    let agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(30)))
                        .build()
                        .into();
                    let mut next = first;
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += interval;
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let result = send_one(&agent, &url, n, &greetings);
                        sent.lock().expect("results").push(result);
                    }
                })
            })
            .collect();
        Load { stop, sent, greetings, workers }
    }

    /// From now on, answers may carry only `greeting`.
    fn only(&self, greeting: &str) {
        *self.greetings.write().expect("greetings") = vec![greeting.to_owned()];
    }

    fn finish(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.join().expect("a load worker");
        }
        std::mem::take(&mut *self.sent.lock().expect("results"))
    }
}

/// Sends request `n` and checks its answer: 200, and the echo of exactly
/// what was sent, greeting with a version the fleet may serve.
fn send_one(agent: &ureq::Agent, url: &str, n: u64, greetings: &RwLock<Vec<String>>) -> Sent {
    let id = format!("load-{n}");
    let body = vec![b'x'; (n % 97) as usize];
    let at = Instant::now();
    let answer = agent
        .post(&format!("{url}?n={n}"))
        .header("authorization", format!("Bearer {TENANT_KEY}"))
        .header("x-request-id", &id)
        .send(&body[..]);
    let problem = match answer {
        Err(e) => Some(format!("no answer: {e}")),
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            let allowed = greetings.read().expect("greetings").clone();
            match serde_json::from_str::<serde_json::Value>(&text) {
                _ if status != 200 => Some(format!("{status}: {text}")),
                Err(e) => Some(format!("not JSON ({e}): {text}")),
                Ok(echo) => {
                    let greeting = echo["greeting"].as_str().unwrap_or_default();
                    let right = echo["query"] == format!("n={n}")
                        && echo["request_id"] == id
                        && echo["body_len"] == body.len()
                        && allowed.iter().any(|g| g == greeting);
                    (!right).then(|| format!("a wrong answer (allowed {allowed:?}): {text}"))
                }
            }
        }
    };
    Sent { id, at, took: at.elapsed(), problem }
}

/// What a phase of the run saw.
struct Phase {
    name: &'static str,
    from: Instant,
    to: Instant,
}

fn p99(mut took: Vec<Duration>) -> Duration {
    took.sort();
    took.get((took.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default()
}

/// How many requests the fleet answers per second through HAProxy when
/// `WORKERS` clients send as fast as they can.
fn capacity(base: &str) -> f64 {
    let stop = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    let window = Duration::from_secs(2);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            let (stop, answered) = (&stop, &answered);
            let url = format!("{base}/t/acme/greet");
            scope.spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                while !stop.load(Ordering::Relaxed) {
                    let sent = agent.post(&url).header("authorization", format!("Bearer {TENANT_KEY}")).send(&b""[..]);
                    if sent.is_ok_and(|r| r.status() == 200) {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(window);
        stop.store(true, Ordering::Relaxed);
    });
    answered.load(Ordering::Relaxed) as f64 / window.as_secs_f64()
}

/// Waits until Prometheus's `promql` gives `expected`, for at most `limit`;
/// how long it took.
fn wait_for_prometheus(prometheus: &Prometheus, promql: &str, expected: f64, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let value = prometheus.value(promql);
        if value == Some(expected) {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{promql} is {value:?}, not {expected}, after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_fleet_behind_haproxy_moves_tags_and_restarts_without_failing_a_request() {
    let registry = Registry::start();
    let root = tempfile::tempdir().expect("a temp dir");
    let reference = format!("oci://{}/acme/greeter:stable", registry.host());
    let (first, _) = push(&greeter(root.path(), "1.0.0", None, false, None), &reference);
    let config = node_config(&reference);
    let mut members: Vec<Member> =
        (2..=4).map(|i| Member::start(&format!("127.0.0.{i}:0"), &config, format!("node{}", i - 1))).collect();
    for member in &members {
        // Each node deploys the tag's artifact before it takes traffic.
        let started = Instant::now();
        while member.node().post("/t/acme/greet", Some(TENANT_KEY), b"").status != 200 {
            assert!(started.elapsed() < Duration::from_secs(60), "{} never deployed the tag", member.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut servers: Vec<(String, String)> = members.iter().map(|m| (m.name.clone(), m.address.clone())).collect();
    // A fourth machine, in HAProxy's list from the start but not running
    // yet: down until it answers `/readyz`.
    let joining = (String::from("node4"), format!("127.0.0.5:{}", free_port("127.0.0.5")));
    servers.push(joining.clone());
    let haproxy = Haproxy::start(&servers);
    let prometheus = Prometheus::start(&servers.iter().map(|(_, address)| address.clone()).collect::<Vec<_>>());
    let serving = |digest: &str| format!("count(mantle_follow_serving{{digest=\"{digest}\"}} == 1)");
    wait_for_prometheus(&prometheus, &serving(&first), 3.0, Duration::from_secs(30));

    let capacity = capacity(&haproxy.base());
    let rate = capacity / 2.0;
    eprintln!("fleet capacity through haproxy: {capacity:.0} requests/s; loading it at {rate:.0}");
    let load = Load::start(&haproxy.base(), rate, &["version 1.0.0"]);
    let mut phases = Vec::new();
    let mut phase = |name, from| phases.push(Phase { name, from, to: Instant::now() });

    let steady = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let fleet_rate = prometheus.value("sum(rate(mantle_requests_total{tenant=\"acme\"}[3s]))").expect("a rate");
    phase("steady", steady);

    // 1. The tag moves: every node deploys the new version by itself.
    let moving = Instant::now();
    load.greetings.write().expect("greetings").push("version 2.0.0".to_owned());
    let (second, _) = push(&greeter(root.path(), "2.0.0", None, false, None), &reference);
    let reported = wait_for_prometheus(&prometheus, &serving(&second), 3.0, POLL * 10);
    let versions = prometheus.value("count(mantle_deployment_info{deployment=\"greeter\", version=\"2.0.0\"})");
    assert_eq!(versions, Some(3.0), "every node's deployment_info names the new version");
    load.only("version 2.0.0");
    std::thread::sleep(Duration::from_secs(1));
    phase("tag move", moving);

    // 2. A rolling restart: SIGTERM, wait for the exit, start again.
    let rolling = Instant::now();
    for member in &mut members {
        let mut node = member.node.take().expect("the node runs");
        node.terminate();
        assert_eq!(node.wait_exit(Duration::from_secs(30)), Some(0), "{}: {}", member.name, node.stderr());
        member.restart();
        // Up in HAProxy's eyes after a check or two.
        std::thread::sleep(Duration::from_millis(500));
    }
    phase("rolling restart", rolling);

    // 3. A fresh node joins, as an autoscaler adds one: its store is empty,
    // so it is not ready until it has pulled what the tag names, and no
    // request reaches it before.
    let scaling = Instant::now();
    let fresh = Member::start(&joining.1, &config, joining.0.clone());
    let started = Instant::now();
    while haproxy.server_stats(&fresh.name).get("stot").copied().unwrap_or(0) < 100 {
        assert!(started.elapsed() < Duration::from_secs(60), "{} never took traffic", fresh.name);
        std::thread::sleep(Duration::from_millis(100));
    }
    members.push(fresh);
    phase("scale out", scaling);
    wait_for_prometheus(&prometheus, &serving(&second), 4.0, Duration::from_secs(10));

    // 4. One node dies at once, and comes back.
    let killing = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    // HAProxy counts, per server, the requests that failed at the server:
    // those it had in flight when it died. A request the node had not
    // begun to answer is a response error (`eresp`), one it had is also
    // an abort (`srv_abrt`), which HAProxy counts in `eresp` as well.
    let aborted = |haproxy: &Haproxy| -> Vec<u64> {
        servers
            .iter()
            .map(|(name, _)| {
                let stats = haproxy.server_stats(name);
                let count = |field: &str| stats.get(field).copied().unwrap_or(0);
                count("eresp").max(count("srv_abrt"))
            })
            .collect()
    };
    let aborted_before = aborted(&haproxy);
    let victim = &mut members[1];
    // The signal goes out somewhere between these two instants; `kill`
    // also waits for the process to go.
    let killing_at = Instant::now();
    victim.node.as_mut().expect("the node runs").kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    victim.restart();
    std::thread::sleep(Duration::from_secs(2));
    let in_flight: Vec<u64> =
        aborted(&haproxy).iter().zip(&aborted_before).map(|(after, before)| after - before).collect();
    phase("sigkill", killing);
    let sent = load.finish();

    // Every request belongs to one phase; each phase's count, failures, p99.
    let mut report = String::from("phase            sent  failed   p99\n");
    for phase in &phases {
        let of_phase: Vec<&Sent> = sent.iter().filter(|s| s.at >= phase.from && s.at < phase.to).collect();
        let failed: Vec<&Sent> = of_phase.iter().copied().filter(|s| s.problem.is_some()).collect();
        let p99 = p99(of_phase.iter().map(|s| s.took).collect());
        report.push_str(&format!(
            "{:<15} {:>5} {:>7} {:>5.1} ms\n",
            phase.name,
            of_phase.len(),
            failed.len(),
            p99.as_secs_f64() * 1e3
        ));
    }
    eprintln!("{report}new digest on all nodes in Prometheus {:.1} s after the push", reported.as_secs_f64());
    eprintln!("fleet-wide rate in Prometheus {fleet_rate:.0}/s, offered {rate:.0}/s");

    let failed = |phase: &Phase| {
        sent.iter().filter(|s| s.at >= phase.from && s.at < phase.to && s.problem.is_some()).collect::<Vec<_>>()
    };
    for phase in &phases[..4] {
        let failed: Vec<_> = failed(phase).iter().map(|s| (&s.id, s.problem.as_deref())).collect();
        let first = &failed[..failed.len().min(10)];
        assert!(failed.is_empty(), "{}: {} failed, the first: {first:?}\n{report}", phase.name, failed.len());
    }
    // A SIGKILL loses at most what was in flight: every failed request
    // was sent before the kill and still unanswered at it, and no other
    // node aborted any. (HAProxy's own count of what the killed node had
    // in flight undercounts: a request it had forwarded on a connection
    // the kill reset is sometimes counted nowhere.)
    let lost = failed(&phases[4]);
    for lost in &lost {
        assert!(
            lost.at < killed && lost.at + lost.took >= killing_at,
            "{} was not in flight at the kill (sent {:?} before it, took {:?}) and failed: {:?}",
            lost.id,
            killed.saturating_duration_since(lost.at),
            lost.took,
            lost.problem
        );
    }
    let victim = 1;
    for (i, aborted) in in_flight.iter().enumerate() {
        assert!(i == victim || *aborted == 0, "{} aborted {aborted} requests without being killed", servers[i].0);
    }
    eprintln!("sigkill: {} failed, {} in flight on the killed node", lost.len(), in_flight[victim]);
    assert!(reported <= POLL * 3, "the new digest took {reported:?} to reach Prometheus from every node");
    assert!(
        fleet_rate > rate * 0.5 && fleet_rate < rate * 1.5,
        "Prometheus saw {fleet_rate:.0} requests/s across the fleet, {rate:.0} were offered"
    );
    dashboard_queries_run(&prometheus);
}

/// Every query of the Grafana dashboard in `deploy/grafana/` runs against
/// this Prometheus, and those that chart traffic the fleet had give data.
fn dashboard_queries_run(prometheus: &Prometheus) {
    let path = mantle_tests::repo_root().join("deploy/grafana/mantle-fleet.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "{} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expr");
            // Grafana's variables, as "All" and a rate window fit for this
            // Prometheus's 500 ms scrapes.
            let promql = expr.replace("$tenant", ".*").replace("$instance", ".*").replace("$__rate_interval", "5s");
            let result = prometheus.query(&promql).unwrap_or_else(|e| panic!("panel {title:?}: {e}"));
            let quiet = title.starts_with("Errors") || title.starts_with("Model load");
            let series = result.as_array().map_or(0, Vec::len);
            assert!(quiet || series > 0, "panel {title:?} charts nothing: {promql}");
        }
    }
}

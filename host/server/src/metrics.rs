//! The node's Prometheus metrics: requests, latencies, guest and inference
//! time, bytes, live instances and queue depth, per tenant, module and
//! model; what the node is and serves (build, deployments, followed tags);
//! and the process's own figures. Served at `/metrics` in the OpenMetrics
//! text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The content type of [`NodeMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: String,
    module: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    tenant: String,
    module: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminLabels {
    operation: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowLabels {
    tenant: String,
    reference: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowedLabels {
    tenant: String,
    reference: String,
    digest: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    tenant: String,
    deployment: String,
    version: String,
    digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    tenant: String,
    model: String,
}

/// Request durations from 1 ms to about 33 s.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Model loads from 10 ms to about 5 min.
fn load_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

/// Every metric the node exports.
pub struct NodeMetrics {
    registry: Registry,
    deployment_info: Family<DeploymentLabels, Gauge>,
    model_load_seconds: Histogram,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RouteLabels, Histogram>,
    admin_requests: Family<AdminLabels, Counter>,
    admin_seconds: Family<OperationLabels, Histogram>,
    guest_seconds: Family<RouteLabels, Histogram>,
    inference_seconds: Family<ModelLabels, Histogram>,
    received_bytes: Family<TenantLabels, Counter>,
    sent_bytes: Family<TenantLabels, Counter>,
    output_logged: Family<TenantLabels, Counter>,
    output_dropped: Family<TenantLabels, Counter>,
    live_instances: Gauge,
    models_held: Gauge,
    running: Family<TenantLabels, Gauge>,
    queued: Family<TenantLabels, Gauge>,
    follow_serving: Family<FollowedLabels, Gauge>,
    follow_checked: Family<FollowLabels, Gauge>,
    follow_failures: Family<FollowLabels, Gauge>,
    follow_refused: Family<FollowLabels, Gauge>,
    follow_fetched_bytes: Family<FollowLabels, Gauge>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> Self {
        let metrics = NodeMetrics {
            registry: Registry::default(),
            deployment_info: Family::default(),
            model_load_seconds: load_histogram(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(duration_histogram),
            admin_requests: Family::default(),
            admin_seconds: Family::new_with_constructor(duration_histogram),
            guest_seconds: Family::new_with_constructor(duration_histogram),
            inference_seconds: Family::new_with_constructor(duration_histogram),
            received_bytes: Family::default(),
            sent_bytes: Family::default(),
            output_logged: Family::default(),
            output_dropped: Family::default(),
            live_instances: Gauge::default(),
            models_held: Gauge::default(),
            running: Family::default(),
            queued: Family::default(),
            follow_serving: Family::default(),
            follow_checked: Family::default(),
            follow_failures: Family::default(),
            follow_refused: Family::default(),
            follow_fetched_bytes: Family::default(),
        };
        let mut root = metrics.registry;
        #[cfg(target_os = "linux")]
        root.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        let registry = root.sub_registry_with_prefix("mantle");
        let build = Family::<BuildLabels, Gauge>::default();
        let labels =
            BuildLabels { version: env!("CARGO_PKG_VERSION").to_owned(), commit: env!("MANTLE_COMMIT").to_owned() };
        build.get_or_create(&labels).set(1);
        registry.register("build_info", "1, labelled with the node's version and the commit it was built from", build);
        registry.register(
            "deployment_info",
            "1 for the version each deployment serves, with the digest of its contents",
            metrics.deployment_info.clone(),
        );
        registry.register(
            "model_load_duration_seconds",
            "Time to read, optimize and plan a model the node did not hold yet",
            metrics.model_load_seconds.clone(),
        );
        registry.register("requests", "Requests answered, by tenant, module and status", metrics.requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to answering it",
            metrics.request_seconds.clone(),
        );
        registry.register(
            "admin_requests",
            "Admin API requests answered, by operation (method and route) and status",
            metrics.admin_requests.clone(),
        );
        registry.register(
            "admin_request_duration_seconds",
            "Time from receiving an admin API request to answering it, by operation",
            metrics.admin_seconds.clone(),
        );
        registry.register(
            "guest_duration_seconds",
            "Time a guest instance ran for a request, inference included",
            metrics.guest_seconds.clone(),
        );
        registry.register(
            "inference_duration_seconds",
            "Time of one model computation, by tenant and model",
            metrics.inference_seconds.clone(),
        );
        registry.register("received_bytes", "Request body bytes received, by tenant", metrics.received_bytes.clone());
        registry.register("sent_bytes", "Response body bytes sent, by tenant", metrics.sent_bytes.clone());
        registry.register(
            "guest_output_logged_bytes",
            "Bytes of guest output (stdout, stderr, context.log) written to the node log, by tenant",
            metrics.output_logged.clone(),
        );
        registry.register(
            "guest_output_dropped_bytes",
            "Bytes of guest output dropped past the request's or the tenant's budget, by tenant",
            metrics.output_dropped.clone(),
        );
        registry.register("live_instances", "Guest instances running now", metrics.live_instances.clone());
        registry.register(
            "models_held",
            "Models the node holds, each once however many tenants and versions use it",
            metrics.models_held.clone(),
        );
        registry.register("running_requests", "Requests running now, by tenant", metrics.running.clone());
        registry.register("queued_requests", "Requests waiting for a turn, by tenant", metrics.queued.clone());
        registry.register(
            "follow_serving",
            "1 for the artifact (digest and bundle version) a followed tag deploys now",
            metrics.follow_serving.clone(),
        );
        registry.register(
            "follow_last_check_timestamp_seconds",
            "When a followed tag was last looked up, in seconds since the epoch",
            metrics.follow_checked.clone(),
        );
        registry.register(
            "follow_failures",
            "Polls of a followed tag that failed in a row; 0 once one succeeds",
            metrics.follow_failures.clone(),
        );
        registry.register(
            "follow_refused",
            "1 while the artifact a followed tag names was refused and the earlier one serves",
            metrics.follow_refused.clone(),
        );
        registry.register(
            "follow_fetched_bytes",
            "Blob bytes fetched from the registry for a followed tag since the node started",
            metrics.follow_fetched_bytes.clone(),
        );
        NodeMetrics { registry: root, ..metrics }
    }

    /// Counts an answered request. `tenant` and `module` are empty when the
    /// request was refused before they were known.
    pub fn request(&self, tenant: &str, module: &str, status: u16, elapsed: Duration, sent: u64) {
        let route = RouteLabels { tenant: tenant.to_owned(), module: module.to_owned() };
        self.requests
            .get_or_create(&RequestLabels {
                tenant: route.tenant.clone(),
                module: route.module.clone(),
                status: status.to_string(),
            })
            .inc();
        self.request_seconds.get_or_create(&route).observe(elapsed.as_secs_f64());
        self.sent_bytes.get_or_create(&TenantLabels { tenant: route.tenant }).inc_by(sent);
    }

    /// Counts an answered admin API request.
    pub fn admin_request(&self, operation: &str, status: u16, elapsed: Duration) {
        let labels = AdminLabels { operation: operation.to_owned(), status: status.to_string() };
        self.admin_requests.get_or_create(&labels).inc();
        let labels = OperationLabels { operation: operation.to_owned() };
        self.admin_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    pub fn received(&self, tenant: &str, bytes: u64) {
        self.received_bytes.get_or_create(&TenantLabels { tenant: tenant.to_owned() }).inc_by(bytes);
    }

    pub fn guest_time(&self, tenant: &str, module: &str, elapsed: Duration) {
        let route = RouteLabels { tenant: tenant.to_owned(), module: module.to_owned() };
        self.guest_seconds.get_or_create(&route).observe(elapsed.as_secs_f64());
    }

    pub fn guest_output(&self, tenant: &str, logged: u64, dropped: u64) {
        let labels = TenantLabels { tenant: tenant.to_owned() };
        self.output_logged.get_or_create(&labels).inc_by(logged);
        self.output_dropped.get_or_create(&labels).inc_by(dropped);
    }

    pub fn inference(&self, tenant: &str, model: &str, elapsed: Duration) {
        let labels = ModelLabels { tenant: tenant.to_owned(), model: model.to_owned() };
        self.inference_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Sets the gauges that are read rather than counted.
    pub fn set_load(
        &self,
        live_instances: usize,
        models_held: usize,
        tenants: impl Iterator<Item = (String, usize, usize)>,
    ) {
        self.live_instances.set(live_instances as i64);
        self.models_held.set(models_held as i64);
        for (tenant, running, queued) in tenants {
            self.running.get_or_create(&TenantLabels { tenant: tenant.clone() }).set(running as i64);
            self.queued.get_or_create(&TenantLabels { tenant }).set(queued as i64);
        }
    }

    /// Sets which version each deployment serves.
    pub fn set_deployments(&self, deployments: &[mantle_node::store::Deployment]) {
        // A version no longer active leaves no series behind.
        self.deployment_info.clear();
        for deployment in deployments {
            let Some(active) = deployment.active_version() else { continue };
            let labels = DeploymentLabels {
                tenant: deployment.tenant.clone(),
                deployment: deployment.name.clone(),
                version: active.version.clone(),
                digest: format!("sha256:{}", active.content_digest()),
            };
            self.deployment_info.get_or_create(&labels).set(1);
        }
    }

    pub fn model_loaded(&self, elapsed: Duration) {
        self.model_load_seconds.observe(elapsed.as_secs_f64());
    }

    /// Sets the followed tags' gauges from their status.
    pub fn set_follows(&self, follows: &[mantle_node::follow::FollowStatus]) {
        // A tag that moved leaves no series for the artifact it left.
        self.follow_serving.clear();
        for follow in follows {
            let labels = FollowLabels { tenant: follow.tenant.clone(), reference: follow.reference.clone() };
            if let (Some(digest), Some(version)) = (&follow.digest, &follow.version) {
                let serving = FollowedLabels {
                    tenant: labels.tenant.clone(),
                    reference: labels.reference.clone(),
                    digest: digest.clone(),
                    version: version.clone(),
                };
                self.follow_serving.get_or_create(&serving).set(1);
            }
            let checked = follow.last_check_ms.map_or(0, |ms| (ms / 1000) as i64);
            self.follow_checked.get_or_create(&labels).set(checked);
            self.follow_failures.get_or_create(&labels).set(i64::from(follow.failures));
            self.follow_refused.get_or_create(&labels).set(i64::from(follow.refused.is_some()));
            self.follow_fetched_bytes.get_or_create(&labels).set(follow.fetched_bytes as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

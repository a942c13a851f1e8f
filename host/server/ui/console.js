// The operator console: the node's health and traffic from its own
// `/metrics`, and the deployments through the admin API the CLI uses.

import { busy, call, el, NodeError, showError, tabStore } from "/ui/common.js";

const POLL_MS = 2000;
/** Points kept per chart: two minutes at one scrape every two seconds. */
const HISTORY = 60;

const token = () => tabStore.get("operator");

// ---- Sign-in and deployments -------------------------------------------

async function showDeployments() {
  const login = document.getElementById("login");
  const section = document.getElementById("deployments");
  if (!token()) {
    login.hidden = false;
    section.hidden = true;
    return;
  }
  let deployments, follows, tenants;
  try {
    [deployments, follows, tenants] = await Promise.all([
      call("/admin/v1/deployments", { token: token() }).then((a) => a.data),
      call("/admin/v1/follows", { token: token() }).then((a) => a.data),
      call("/admin/v1/tenants", { token: token() }).then((a) => a.data),
    ]);
  } catch (error) {
    if (error instanceof NodeError && (error.status === 401 || error.status === 403)) {
      tabStore.set("operator", "");
      login.hidden = false;
      section.hidden = true;
      showError(document.getElementById("login-error"), error);
      return;
    }
    section.hidden = false;
    showError(document.getElementById("deployments-error"), error);
    return;
  }
  login.hidden = true;
  section.hidden = false;
  document.getElementById("deployments-error").replaceChildren();
  document.getElementById("deployment-list").replaceChildren(...tenants.map((tenant) => tenantBlock(tenant, deployments, follows)));
}

function tenantBlock(tenant, deployments, follows) {
  const own = deployments.filter((d) => d.tenant === tenant.id);
  const followed = follows.filter((f) => f.tenant === tenant.id);
  return el(
    "div",
    { "data-tenant": tenant.id },
    el("h3", {}, `Tenant ${tenant.id}`),
    own.length === 0
      ? el("p", { class: "muted" }, "No deployments: this tenant serves only what node.toml gives it.")
      : el(
          "div",
          { class: "table-wrap" },
          el(
            "table",
            { "aria-label": `Deployments of tenant ${tenant.id}` },
            el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "deployment"), el("th", { scope: "col" }, "versions"))),
            el("tbody", {}, own.map((deployment) => deploymentRow(deployment))),
          ),
        ),
    followed.length ? followTable(tenant.id, followed) : null,
  );
}

function deploymentRow(deployment) {
  const versions = deployment.versions.map((stored) => {
    const version = stored.version;
    if (version === deployment.active) {
      return el("li", {}, el("span", { class: "tag active" }, `${version} · active`), signer(stored));
    }
    const button = el(
      "button",
      {
        type: "button",
        class: "secondary",
        "aria-label": `Activate version ${version} of ${deployment.name} for tenant ${deployment.tenant}`,
      },
      `Activate ${version}`,
    );
    button.addEventListener("click", () => confirmActivation(deployment, version, button));
    return el("li", {}, el("span", { class: "tag" }, version), " ", button, signer(stored));
  });
  return el(
    "tr",
    { "data-deployment": deployment.name },
    el("th", { scope: "row" }, deployment.name),
    el("td", {}, el("ul", { class: "versions" }, versions)),
  );
}

function signer(stored) {
  return stored.signer ? el("span", { class: "meta" }, ` signed by ${stored.signer.slice(0, 16)}…`) : null;
}

function followTable(tenant, followed) {
  return el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      { "aria-label": `Registry tags tenant ${tenant} follows` },
      el(
        "thead",
        {},
        el("tr", {}, ["followed reference", "serves", "last check", "last error"].map((h) => el("th", { scope: "col" }, h))),
      ),
      el(
        "tbody",
        {},
        followed.map((f) =>
          el(
            "tr",
            {},
            el("td", {}, el("code", {}, f.reference)),
            el("td", {}, f.deployment ? `${f.deployment} ${f.version ?? ""}` : "nothing yet"),
            el("td", {}, f.last_check_ms ? `${ago(Date.now() - f.last_check_ms)} ago` : "not yet"),
            el("td", {}, f.last_error ? el("span", { class: "error" }, f.last_error) : "none"),
          ),
        ),
      ),
    ),
  );
}

/** Asks before activating, then activates through the admin API. */
function confirmActivation(deployment, version, button) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent =
    `Tenant ${deployment.tenant}'s deployment ${deployment.name} serves version ${deployment.active ?? "none"}. ` +
    `Serve version ${version} instead? Requests already running finish on the version they started with.`;
  dialog.addEventListener(
    "close",
    async () => {
      if (dialog.returnValue !== "yes") {
        button.focus();
        return;
      }
      const where = document.getElementById("deployments-error");
      const status = document.getElementById("deployments-status");
      status.textContent = "";
      try {
        const path = `/admin/v1/tenants/${encodeURIComponent(deployment.tenant)}/deployments/${encodeURIComponent(deployment.name)}/activate`;
        await busy(button, () =>
          call(path, { method: "POST", token: token(), contentType: "application/json", body: JSON.stringify({ version }) }),
        );
        status.textContent = `${deployment.name} of tenant ${deployment.tenant} now serves version ${version}.`;
        await showDeployments();
      } catch (error) {
        showError(where, error);
      }
    },
    { once: true },
  );
  dialog.returnValue = "";
  dialog.showModal();
}

// ---- Node facts and traffic, from /metrics -------------------------------

/** The samples of a Prometheus text exposition. */
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    for (const label of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[label[1]] = label[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function one(samples, name) {
  const found = samples.find((s) => s.name === name);
  return found ? found.value : undefined;
}

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} days`;
}

async function showNode(samples) {
  const facts = [];
  const [health, ready] = await Promise.all([
    call("/healthz").then((a) => String(a.data).trim(), (e) => `${e.status || ""} ${e.message}`),
    call("/readyz").then((a) => String(a.data).trim(), (e) => `${e.status || ""} ${e.message}`),
  ]);
  facts.push(["health", health], ["readiness", ready]);
  const build = samples.find((s) => s.name === "mantle_build_info");
  if (build) facts.push(["version", `${build.labels.version} (${build.labels.commit})`]);
  const started = one(samples, "process_start_time_seconds");
  if (started) facts.push(["up for", ago(Date.now() - started * 1000)]);
  const rss = one(samples, "process_resident_memory_bytes");
  if (rss !== undefined) facts.push(["resident memory", `${(rss / 1048576).toFixed(0)} MiB`]);
  const models = one(samples, "mantle_models_held");
  if (models !== undefined) facts.push(["models loaded", String(models)]);
  const live = one(samples, "mantle_live_instances");
  if (live !== undefined) facts.push(["guest instances running", String(live)]);
  document.getElementById("node-facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
}

/** Per route: the last scrape's totals, and the points charted. */
const routes = new Map();
let lastScrape = 0;

function routeTotals(samples) {
  const totals = new Map();
  const of = (labels) => {
    const key = `${labels.tenant}/${labels.module}`;
    if (!totals.has(key)) totals.set(key, { count: 0, buckets: new Map() });
    return totals.get(key);
  };
  for (const s of samples) {
    // Requests no route answered (tenant and module empty) are not charted.
    if (!s.labels.tenant || !s.labels.module) continue;
    if (s.name === "mantle_requests_total") of(s.labels).count += s.value;
    if (s.name === "mantle_request_duration_seconds_bucket") {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      of(s.labels).buckets.set(le, s.value);
    }
  }
  return totals;
}

/** The 99th percentile of the requests that fell between two scrapes,
 * interpolated within its bucket as Prometheus' histogram_quantile does. */
function p99(before, after) {
  const bounds = [...after.buckets.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => after.buckets.get(le) - ((before && before.buckets.get(le)) || 0));
  const total = counts[counts.length - 1];
  if (!total) return null;
  const rank = 0.99 * total;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= rank) {
      if (bounds[i] === Infinity) return bounds[i - 1] ?? null;
      const lower = i === 0 ? 0 : bounds[i - 1];
      const below = i === 0 ? 0 : counts[i - 1];
      const inBucket = counts[i] - below;
      return lower + (bounds[i] - lower) * (inBucket ? (rank - below) / inBucket : 1);
    }
  }
  return null;
}

function chart(key, route) {
  const points = route.points;
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("viewBox", `0 0 ${HISTORY - 1} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  const line = (values, className) => {
    const max = Math.max(...values.filter((v) => v !== null), 0) || 1;
    const offset = HISTORY - values.length;
    const polyline = document.createElementNS(svgNs, "polyline");
    polyline.setAttribute(
      "points",
      values.map((v, i) => `${offset + i},${100 - ((v ?? 0) / max) * 95}`).join(" "),
    );
    if (className) polyline.setAttribute("class", className);
    svg.append(polyline);
  };
  line(points.map((p) => p.rate));
  line(points.map((p) => p.p99), "p99");
  const last = points[points.length - 1];
  const p99Shown = last.p99 === null ? "–" : `${(last.p99 * 1000).toFixed(0)} ms`;
  const summary = `${last.rate.toFixed(1)} req/s · p99 ${p99Shown} · ${route.totals.count} answered`;
  return el("figure", { class: "chart", "data-route": key }, el("figcaption", {}, el("strong", {}, key), " ", el("span", { class: "meta" }, summary)), svg);
}

async function poll() {
  if (document.visibilityState !== "visible") return;
  let samples;
  try {
    samples = parseMetrics((await call("/metrics")).data);
  } catch (error) {
    showError(document.getElementById("node-error"), error);
    return;
  }
  document.getElementById("node-error").replaceChildren();
  await showNode(samples);
  const now = performance.now();
  const seconds = lastScrape ? (now - lastScrape) / 1000 : 0;
  lastScrape = now;
  for (const [key, totals] of routeTotals(samples)) {
    const route = routes.get(key) || { totals: null, points: [] };
    if (route.totals && seconds > 0) {
      route.points.push({ rate: Math.max(0, totals.count - route.totals.count) / seconds, p99: p99(route.totals, totals) });
      if (route.points.length > HISTORY) route.points.shift();
    }
    route.totals = totals;
    routes.set(key, route);
  }
  const charted = [...routes.entries()].filter(([, route]) => route.points.length > 0);
  document.getElementById("charts").replaceChildren(
    ...(charted.length
      ? charted.map(([key, route]) => chart(key, route))
      : [el("p", { class: "muted" }, "No route has answered a request yet.")]),
  );
}

// ---- Wiring ---------------------------------------------------------------

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = document.getElementById("token");
  tabStore.set("operator", field.value.trim());
  field.value = "";
  document.getElementById("login-error").replaceChildren();
  showDeployments();
});
document.getElementById("sign-out").addEventListener("click", () => {
  tabStore.set("operator", "");
  showDeployments();
});
document.getElementById("refresh").addEventListener("click", (event) => busy(event.currentTarget, showDeployments));
document.addEventListener("visibilitychange", poll);

showDeployments();
poll();
setInterval(poll, POLL_MS);

// What the try-it page and the console share: calls to the node (this
// origin only), its errors as the node words them, and building the DOM.

/** An answer that was not a success: the node's own message, its status
 * and the request id it gave. */
export class NodeError extends Error {
  constructor(status, message, requestId) {
    super(message);
    this.status = status;
    this.requestId = requestId;
  }
}

/** Calls the node at `path` (a path on this origin, never another host).
 * Resolves to the answer's status, body (parsed JSON, text, or a Blob for
 * images and other binary types), content type, request id and the
 * milliseconds it took; rejects with a NodeError for any non-2xx. */
export async function call(path, { method = "GET", body, contentType, token } = {}) {
  if (!path.startsWith("/") || path.startsWith("//")) {
    throw new Error(`not a path on this node: ${path}`);
  }
  const headers = new Headers();
  if (contentType) headers.set("Content-Type", contentType);
  if (token) headers.set("Authorization", `Bearer ${token}`);
  const started = performance.now();
  const response = await fetch(path, { method, body, headers, cache: "no-store", credentials: "omit" });
  const type = response.headers.get("Content-Type") || "";
  let data;
  if (type.includes("json")) {
    const text = await response.text();
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  } else if (type.startsWith("text/") || type.includes("openmetrics-text") || type === "") {
    data = await response.text();
  } else {
    data = await response.blob();
  }
  const ms = performance.now() - started;
  const requestId = response.headers.get("X-Request-Id") || "";
  if (!response.ok) {
    const message =
      data && typeof data === "object" && typeof data.error === "string"
        ? data.error
        : typeof data === "string" && data.trim()
          ? data.trim()
          : response.statusText;
    throw new NodeError(response.status, message, requestId);
  }
  return { status: response.status, data, type, ms, requestId };
}

/** Makes an element: `el("p", { class: "muted" }, "text", child)`.
 * Attributes starting with `on` are listeners; text is always text. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (value === true) {
      node.setAttribute(name, "");
    } else {
      node.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A line saying how long a call took and which request it was. */
export function meta(ms, requestId, status) {
  const parts = [];
  if (status) parts.push(`HTTP ${status}`);
  parts.push(`${ms.toFixed(0)} ms`);
  if (requestId) parts.push(`request id ${requestId}`);
  return el("p", { class: "meta" }, parts.join(" · "));
}

/** Shows `error` in `where`, in the node's words when it came from the node. */
export function showError(where, error) {
  where.replaceChildren();
  if (error instanceof NodeError) {
    where.append(
      el("p", { class: "error", role: "alert" }, `${error.status}: ${error.message}`),
      error.requestId ? el("p", { class: "meta" }, `request id ${error.requestId}`) : null,
    );
  } else {
    where.append(el("p", { class: "error", role: "alert" }, String(error && error.message ? error.message : error)));
  }
}

/** Runs `work` with `button` disabled, so that one click sends one request. */
export async function busy(button, work) {
  button.disabled = true;
  try {
    return await work();
  } finally {
    button.disabled = false;
  }
}

/** A value kept for this tab only: sessionStorage, so that it is gone
 * when the tab closes and no other tab or later visit sees it. */
export const tabStore = {
  get(name) {
    try {
      return sessionStorage.getItem(`mantle.${name}`) || "";
    } catch {
      return "";
    }
  },
  set(name, value) {
    try {
      if (value) sessionStorage.setItem(`mantle.${name}`, value);
      else sessionStorage.removeItem(`mantle.${name}`);
    } catch {
      // Storage can be off; the value then lasts as long as the page.
    }
  },
};

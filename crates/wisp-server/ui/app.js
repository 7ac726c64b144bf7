// wisp's web UI: functions at a glance (refreshed live), deploy from an
// uploaded artifact, invoke, scale, remove, live logs, call trees, the async
// queue, and namespaces, tokens, secrets (names only) and usage. Plain DOM
// and fetch against the node's own API, no build step.
"use strict";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
let token = localStorage.getItem("wisp-token") || "";
let stopFollowing = () => {};

// Makes an element: el("td", {class: "x"}, "text", child...). Text is never parsed as HTML.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` },
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = new Error(body.error || `${response.status} ${response.statusText}`);
    error.unauthorized = response.status === 401;
    throw error;
  }
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// Runs an action of a form or button, showing its error in `target` instead of failing silently.
async function act(target, action) {
  target.textContent = "";
  try {
    await action();
  } catch (error) {
    target.textContent = error.message;
  }
}

function logout() {
  token = "";
  localStorage.removeItem("wisp-token");
  if (location.hash === "#/login") route();
  else location.hash = "#/login";
}
document.getElementById("logout").addEventListener("click", logout);

function page(...children) {
  stopFollowing();
  main.replaceChildren(...children);
}

function statusClass(status) { return status >= 500 || status === 429 ? "status-bad" : "status-ok"; }

function showLogin() {
  nav.hidden = true;
  page(document.getElementById("login").content.cloneNode(true));
  document.getElementById("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    token = document.getElementById("token").value.trim();
    try {
      await api("/system/info");
      localStorage.setItem("wisp-token", token);
      location.hash = "#/";
    } catch (error) {
      document.getElementById("login-error").textContent = error.message;
    }
  });
}

// A sparkline of call durations, oldest to newest.
function sparkline(durations) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", "120");
  svg.setAttribute("height", "24");
  if (durations.length > 1) {
    const max = Math.max(...durations, 0.001);
    const points = durations.map((d, i) =>
      `${(i / (durations.length - 1)) * 118 + 1},${23 - (d / max) * 22}`).join(" ");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points);
    svg.append(line);
  }
  return svg;
}

async function functionRows() {
  const functions = await api("/system/functions");
  return Promise.all(functions.map(async (f) => {
    const name = `${f.service}.${f.namespace || "default"}`;
    const records = await api(`/system/records?name=${encodeURIComponent(name)}&limit=30`);
    const failed = records.filter((r) => r.status >= 500 || r.status === 429).length;
    const durations = records.map((r) => r.durationMs).reverse();
    const sorted = [...durations].sort((a, b) => a - b);
    const p50 = sorted.length ? sorted[Math.floor(sorted.length / 2)].toFixed(1) + " ms" : "–";
    return el("tr", { "data-function": f.service },
      el("td", {}, el("a", { href: `#/function/${encodeURIComponent(name)}` }, f.service)),
      el("td", {}, f.namespace || "default"),
      el("td", {}, el("span", { class: "kind" }, f.kind)),
      el("td", {}, f.route || "–"),
      el("td", {}, f.invocationCount),
      el("td", {}, records.length ? `${Math.round((100 * failed) / records.length)}%` : "–"),
      el("td", {}, p50),
      el("td", {}, sparkline(durations)));
  }));
}

// The deploy form: an artifact uploaded from this browser, then deployed.
function deployForm() {
  const name = el("input", { id: "deploy-name", placeholder: "hello", required: "" });
  const namespace = el("input", { id: "deploy-namespace", placeholder: "default" });
  const kind = el("select", { id: "deploy-kind" },
    ...["wasm-http", "wasm-stdio", "process", "process-http"].map((k) => el("option", {}, k)));
  const artifact = el("input", { id: "artifact", type: "file" });
  const command = el("input", { id: "deploy-command", placeholder: "process kinds: ./handler.sh" });
  const error = el("p", { id: "deploy-error", class: "error", role: "alert" });
  const submit = (event) => {
    event.preventDefault();
    act(error, async () => {
      const deployment = { service: name.value.trim(), kind: kind.value };
      if (namespace.value.trim()) deployment.namespace = namespace.value.trim();
      if (command.value.trim()) deployment.envProcess = command.value.trim();
      const file = artifact.files[0];
      if (file) {
        const uploaded = await api("/system/artifacts", { method: "PUT", body: file });
        deployment.image = uploaded.digest;
      }
      await api("/system/functions", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(deployment),
      });
      await showFunctions();
    });
  };
  return el("section", { class: "card" },
    el("h2", {}, "Deploy"),
    el("form", { onsubmit: submit },
      el("div", { class: "row" },
        el("div", {}, el("label", { for: "deploy-name" }, "Name"), name),
        el("div", {}, el("label", { for: "deploy-namespace" }, "Namespace"), namespace),
        el("div", {}, el("label", { for: "deploy-kind" }, "Kind"), kind)),
      el("div", { class: "row" },
        el("div", {}, el("label", { for: "artifact" }, "Artifact (.wasm, or a .tar of a process's directory)"), artifact),
        el("div", {}, el("label", { for: "deploy-command" }, "Command"), command)),
      el("button", { type: "submit", id: "deploy" }, "Deploy")),
    error);
}

async function showFunctions() {
  const body = el("tbody", {}, ...await functionRows());
  const list = el("table", {},
    el("thead", {}, el("tr", {}, ...["Name", "Namespace", "Kind", "Route", "Calls", "Errors", "p50", "Latency"].map((h) => el("th", {}, h)))),
    body);
  page(el("section", { class: "card" },
    el("h1", {}, "Functions"),
    body.children.length === 0 ? el("p", { class: "muted" }, "No functions yet: wisp deploy, or deploy one below") : list),
  deployForm());
  // Live: the table is read again every few seconds while it is shown.
  const timer = setInterval(() => functionRows().then((rows) => body.replaceChildren(...rows)).catch(() => {}), 3000);
  stopFollowing = () => clearInterval(timer);
}

function parseHeaders(text) {
  const headers = {};
  for (const line of text.split("\n")) {
    const at = line.indexOf(":");
    if (at > 0) headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return headers;
}

async function showFunction(reference) {
  const [name, namespace = "default"] = reference.split(".");
  const f = await api(`/system/function/${encodeURIComponent(reference)}`);
  const path = el("input", { id: "path", value: "/" });
  const method = el("select", { id: "method" }, ...["POST", "GET", "PUT", "DELETE"].map((m) => el("option", {}, m)));
  const headers = el("textarea", { id: "headers", placeholder: "Content-Type: text/plain" });
  const body = el("textarea", { id: "body", placeholder: "request body" });
  const mode = el("select", { id: "mode" }, el("option", { value: "sync" }, "sync"), el("option", { value: "async" }, "async"));
  const result = el("div", { id: "result" });
  const logs = el("pre", { id: "logs", class: "logs" });

  async function invoke(event) {
    event.preventDefault();
    const asynchronous = mode.value === "async";
    const prefix = asynchronous ? "/async-function/" : "/function/";
    const suffix = path.value === "/" ? "" : path.value;
    const init = { method: asynchronous ? "POST" : method.value, headers: parseHeaders(headers.value) };
    if (init.method !== "GET") init.body = body.value;
    // The token reaches private functions; the gateway takes it off before the function sees the request.
    init.headers.Authorization = `Bearer ${token}`;
    result.replaceChildren(el("p", { class: "muted" }, "calling…"));
    const started = performance.now();
    try {
      const response = await fetch(prefix + encodeURIComponent(reference) + suffix, init);
      const text = await response.text();
      const took = (performance.now() - started).toFixed(1);
      const callId = response.headers.get("x-call-id");
      const head = [...response.headers].map(([k, v]) => `${k}: ${v}`).join("\n");
      result.replaceChildren(
        el("p", {}, el("span", { id: "response-status", class: statusClass(response.status) }, response.status), " ",
          response.statusText, ` · ${took} ms · call `, el("a", { href: `#/trace/${callId}` }, callId)),
        el("pre", { id: "response-headers", class: "muted" }, head),
        el("pre", { id: "response-body" }, text));
    } catch (error) {
      result.replaceChildren(el("p", { id: "response-error", class: "error" }, `the call failed: ${error.message}`));
    }
  }

  const actionError = el("p", { id: "action-error", class: "error", role: "alert" });
  const remove = () => act(actionError, async () => {
    if (!confirm(`Remove ${reference}?`)) return;
    await api("/system/functions", {
      method: "DELETE", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ functionName: name, namespace }),
    });
    location.hash = "#/";
  });
  const replicas = el("input", { id: "replicas", type: "number", min: "0", value: f.replicas ?? 1 });
  const scale = (event) => {
    event.preventDefault();
    act(actionError, async () => {
      await api(`/system/scale-function/${encodeURIComponent(name)}?namespace=${encodeURIComponent(namespace)}`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ replicas: Number(replicas.value) }),
      });
      await showFunction(reference);
    });
  };
  const triggers = (f.triggers || []).map((t) => Object.entries(t).map(([k, v]) => `${k} ${v}`).join(", "));
  const facts = [
    ["replicas", f.kind === "process-http" ? `${f.availableReplicas ?? "?"} of ${f.replicas ?? "?"}` : "one instance per call"],
    ["route", f.route || "none"], ["private", f.private ? "yes" : "no"],
    ["timeout", f.timeout || "default"], ["memory", f.memory || "default"],
    ["max concurrency", f.maxConcurrency ?? "unbounded"], ["triggers", triggers.join("; ") || "none"],
  ];

  page(
    el("section", { class: "card" },
      el("h1", {}, name, " ", el("span", { class: "kind" }, f.kind)),
      el("p", { class: "muted" }, `namespace ${namespace} · ${f.invocationCount} calls`),
      el("table", { id: "facts" }, el("tbody", {}, ...facts.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))))),
      el("div", { class: "row" },
        f.kind === "process-http"
          ? el("form", { onsubmit: scale, class: "row" },
            el("div", {}, el("label", { for: "replicas" }, "Replicas"), replicas),
            el("button", { type: "submit", id: "scale" }, "Scale"))
          : "",
        el("div", {}, el("button", { id: "remove", class: "danger", onclick: remove }, "Remove"))),
      actionError),
    el("div", { class: "grid" },
      el("section", { class: "card" },
        el("h2", {}, "Invoke"),
        el("form", { onsubmit: invoke },
          el("div", { class: "row" },
            el("div", {}, el("label", { for: "mode" }, "Mode"), mode),
            el("div", {}, el("label", { for: "method" }, "Method"), method),
            el("div", {}, el("label", { for: "path" }, "Path"), path)),
          el("label", { for: "headers" }, "Headers (one per line)"), headers,
          el("label", { for: "body" }, "Body"), body,
          el("button", { type: "submit", id: "invoke" }, "Invoke")),
        result),
      el("section", { class: "card" }, el("h2", {}, "Live logs"), logs)));
  followLogs(reference, logs);
}

// Streams /system/logs?follow=true into `target` until the page changes.
function followLogs(reference, target) {
  const controller = new AbortController();
  stopFollowing = () => controller.abort();
  (async () => {
    const response = await fetch(`/system/logs?name=${encodeURIComponent(reference)}&tail=50&follow=true`, {
      headers: { Authorization: `Bearer ${token}` }, signal: controller.signal,
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines.filter(Boolean)) {
        const entry = JSON.parse(line);
        target.append(el("span", { class: `log-line log-${entry.stream}` },
          `${entry.time.slice(11, 23)} ${entry.callId || "-"} [${entry.stream}] ${entry.message}\n`));
        target.scrollTop = target.scrollHeight;
      }
    }
  })().catch(() => {});
}

async function showTrace(callId) {
  const trace = await api(`/system/traces/${encodeURIComponent(callId)}`);
  const spans = new Set(trace.calls.map((c) => c.spanId));
  const children = new Map();
  const roots = [];
  for (const call of trace.calls) {
    if (call.parentSpanId && spans.has(call.parentSpanId)) {
      if (!children.has(call.parentSpanId)) children.set(call.parentSpanId, []);
      children.get(call.parentSpanId).push(call);
    } else roots.push(call);
  }
  const tree = el("div", { class: "tree", id: "tree" });
  const draw = (call, depth) => {
    tree.append(el("div", { style: `padding-left:${depth * 1.6}rem` },
      el("strong", {}, `${call.function}.${call.namespace}`), " ",
      el("span", { class: statusClass(call.status) }, call.status), ` ${call.durationMs.toFixed(1)} ms `,
      el("span", { class: "muted" }, call.callId),
      call.error ? el("div", { class: "error" }, call.error) : "",
      call.lastStderr ? el("div", { class: "muted" }, `stderr: ${call.lastStderr}`) : ""));
    for (const child of children.get(call.spanId) || []) draw(child, depth + 1);
  };
  roots.forEach((root) => draw(root, 0));
  page(el("section", { class: "card" }, el("h1", {}, "Trace"), el("p", { class: "muted" }, trace.traceId), tree));
}

async function showQueue() {
  const { calls } = await api("/system/calls?limit=100");
  const dead = calls.filter((c) => c.status === "dead");
  const table = (list, withRetry) => el("table", {},
    el("thead", {}, el("tr", {}, ...["Call", "Function", "Status", "Attempts", "Created", "Error", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...list.map((c) => el("tr", {},
      el("td", {}, el("a", { href: `#/trace/${c.id}` }, c.id)),
      el("td", {}, `${c.function}.${c.namespace}`),
      el("td", {}, c.status),
      el("td", {}, c.attempts),
      el("td", {}, c.createdAt),
      el("td", {}, c.error || ""),
      el("td", {}, withRetry ? el("button", { class: "small", onclick: async () => {
        await api(`/system/calls/${encodeURIComponent(c.id)}/retry`, { method: "POST" });
        showQueue();
      } }, "Retry") : "")))));
  page(
    el("section", { class: "card" }, el("h1", {}, "Dead letters"),
      dead.length ? table(dead, true) : el("p", { class: "muted" }, "None.")),
    el("section", { class: "card" }, el("h1", {}, "Async calls"),
      calls.length ? table(calls, false) : el("p", { class: "muted" }, "No async calls yet.")));
}

// A page of one table: `rows` of cells under `headers`, or `empty` when there are none.
function tablePage(title, headers, rows, empty) {
  page(el("section", { class: "card" }, el("h1", {}, title),
    rows.length
      ? el("table", { id: "listing" },
        el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c))))))
      : el("p", { class: "muted" }, empty)));
}

async function showNamespaces() {
  const namespaces = await api("/system/namespaces?detail=true");
  const quota = (value) => value ?? "unbounded";
  tablePage("Namespaces", ["Name", "Functions", "Max functions", "Max concurrency", "Artifact bytes", "Max artifact bytes"],
    namespaces.map((n) => [n.name, n.functions, quota(n.quotas.maxFunctions), quota(n.quotas.maxConcurrency),
      n.artifactBytes, quota(n.quotas.maxArtifactBytes)]), "No namespaces.");
}

async function showTokens() {
  const tokens = await api("/system/tokens");
  tablePage("Tokens", ["Id", "Namespace", "Role", "Name", "Created", ""], tokens.map((t) => [t.id, t.namespace, t.role, t.name || "", t.createdAt,
    el("button", { class: "small", onclick: async () => {
      if (!confirm(`Revoke token ${t.id}?`)) return;
      await api(`/system/tokens/${encodeURIComponent(t.id)}`, { method: "DELETE" });
      showTokens();
    } }, "Revoke")]), "No namespace tokens: wisp token create");
}

async function showSecrets() {
  const secrets = await api("/system/secrets");
  tablePage("Secrets", ["Name", "Namespace", "Created"], secrets.map((s) => [s.name, s.namespace, s.createdAt]),
    "No secrets: wisp secret create");
}

async function showUsage() {
  const usage = await api("/system/usage");
  tablePage("Usage", ["Function", "Namespace", "Calls", "Errors", "Seconds", "GB-seconds"],
    usage.map((u) => [u.function, u.namespace, u.invocations, u.errors, u.seconds.toFixed(3), u.gbSeconds.toFixed(4)]),
    "No calls yet.");
}

async function route() {
  if (!token) return showLogin();
  nav.hidden = false;
  const [, view, arg] = location.hash.split("/");
  try {
    if (view === "function") await showFunction(decodeURIComponent(arg));
    else if (view === "trace") await showTrace(decodeURIComponent(arg));
    else if (view === "queue") await showQueue();
    else if (view === "namespaces") await showNamespaces();
    else if (view === "tokens") await showTokens();
    else if (view === "secrets") await showSecrets();
    else if (view === "usage") await showUsage();
    else if (view === "login") showLogin();
    else await showFunctions();
  } catch (error) {
    if (error.unauthorized) logout();
    else page(el("section", { class: "card" }, el("p", { class: "error" }, error.message)));
  }
}
window.addEventListener("hashchange", route);
route();

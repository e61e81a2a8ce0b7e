// banger web UI: makes the server-rendered pages live through the public API.
// No framework, no build step: this file is embedded in bangerd as is.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const interval = Math.max(1, Number(document.body.dataset.interval || 5)) * 1000;

// One API call. Resolves to the decoded body; rejects with the API's error object
// ({code, message, field?, causes?}) so forms can show it next to the field.
async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw { code: "unreachable", message: "bangerd did not answer: " + e.message };
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) throw data && data.message ? data : { code: "http_" + res.status, message: text || res.statusText };
  return data;
}

// Follows an operation's server-sent events; calls onUpdate with every snapshot and
// resolves with the final one.
function followOperation(op, onUpdate) {
  return new Promise((resolve) => {
    onUpdate(op);
    if (op.status !== "running" && op.status !== "pending" && finished(op)) return resolve(op);
    const events = new EventSource("/v1/operations/" + op.id + "/events");
    events.addEventListener("operation", (e) => {
      const snap = JSON.parse(e.data);
      onUpdate(snap);
      if (finished(snap)) { events.close(); resolve(snap); }
    });
    events.onerror = async () => {
      events.close();
      try { const snap = await api("GET", "/v1/operations/" + op.id); onUpdate(snap); resolve(snap); }
      catch (_) { resolve(op); }
    };
  });
}
const finished = (op) => op.status === "succeeded" || op.status === "failed";

function showError(container, err) {
  const box = container;
  if (!box) return;
  box.textContent = err ? err.message + (err.causes && err.causes.length ? " (" + err.causes.join(": ") + ")" : "") : "";
  box.classList.toggle("shown", !!err);
}

function points(values, width, height, max) {
  if (values.length === 0) return "";
  const top = Math.max(max || 0, ...values, 1e-9);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  return values.map((v, i) => (i * step).toFixed(1) + "," + (height - (v / top) * (height - 2) - 1).toFixed(1)).join(" ");
}

function svgLine(svg, cls, values, max) {
  let line = svg.querySelector("polyline." + cls);
  if (!line) {
    line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("class", cls);
    svg.appendChild(line);
  }
  const box = svg.viewBox.baseVal;
  line.setAttribute("points", points(values, box.width, box.height, max));
}

const pct = (v) => v.toFixed(1) + " %";
function bytes(v) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
}

// ---- VM list ---------------------------------------------------------------------------
async function vmsPage() {
  const refresh = async () => {
    try {
      const vms = await api("GET", "/v1/vms");
      const rows = $$("#vms tbody tr");
      const shown = rows.map((r) => r.dataset.vm).sort().join();
      if (vms.map((v) => v.id).sort().join() !== shown) return location.reload();
      for (const vm of vms) {
        const badge = $(`tr[data-vm="${vm.id}"] [data-field=state]`);
        badge.textContent = vm.state;
        badge.className = "state state-" + vm.state;
      }
      const stats = await api("GET", "/v1/stats?last=60");
      for (const s of stats) {
        const row = $(`tr[data-vm="${s.vm_id}"]`);
        if (!row) continue;
        const cpu = s.samples.map((x) => x.cpu_percent);
        svgLine($("svg.spark", row), "a", cpu, 100);
        $("[data-field=cpu]", row).textContent = s.latest ? pct(s.latest.cpu_percent) : "–";
      }
    } catch (_) { /* the daemon restarted or went away: try again next tick */ }
  };
  await refresh();
  setInterval(refresh, interval);
}

// ---- Create form ------------------------------------------------------------------------
function createPage() {
  const form = $("#create-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const box of $$("[data-error-for]", form)) showError(box, null);
    for (const input of $$("input, select", form)) input.removeAttribute("aria-invalid");
    const body = {};
    for (const input of $$("input, select", form)) {
      const value = input.value.trim();
      if (value === "") continue;
      // Numbers go as numbers; anything else is sent as typed so the API names the field.
      body[input.name] = input.hasAttribute("data-number") && /^\d+$/.test(value) ? Number(value) : value;
    }
    const button = $("button[type=submit]", form);
    button.disabled = true;
    let op;
    try {
      op = await api("POST", "/v1/vms", body);
    } catch (err) {
      button.disabled = false;
      const field = err.field && $(`[data-error-for="${err.field}"]`, form) ? err.field : "";
      showError($(`[data-error-for="${field}"]`, form), err);
      const input = field && form.elements[field];
      if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
      return;
    }
    const progress = $("#progress");
    progress.hidden = false;
    $("#op-vm").textContent = op.vm_name || "";
    const done = await followOperation(op, (snap) => renderStages($("#stages"), snap));
    const result = $("#op-result");
    if (done.status === "succeeded") {
      result.innerHTML = "";
      const link = document.createElement("a");
      link.href = "/vms/" + encodeURIComponent(done.vm_name);
      link.id = "open-vm";
      link.textContent = "Open " + done.vm_name + " →";
      result.append("Ready. ", link);
    } else {
      result.className = "error shown";
      result.textContent = done.error ? done.error.message : "the create failed";
      button.disabled = false;
    }
  });
}

function renderStages(list, op) {
  list.innerHTML = "";
  for (const stage of op.stages) {
    const li = document.createElement("li");
    li.className = stage.status;
    li.dataset.stage = stage.name;
    const mark = { done: "✓", running: "…", failed: "✗", pending: "·", skipped: "–" }[stage.status] || "·";
    li.innerHTML = '<span class="mark"></span><span class="name"></span><span class="ms"></span>';
    li.querySelector(".mark").textContent = mark;
    li.querySelector(".name").textContent = stage.name;
    li.querySelector(".ms").textContent = stage.duration_ms != null ? stage.duration_ms + " ms" : "";
    list.appendChild(li);
  }
}

// ---- VM page ----------------------------------------------------------------------------
function vmPage() {
  const id = document.body.dataset.vm;
  const name = document.body.dataset.name;
  const status = $("#action-status");
  for (const button of $$("[data-action]")) {
    button.addEventListener("click", async () => {
      const action = button.dataset.action;
      if (action === "delete" && !confirm("Delete " + name + " and its disks?")) return;
      showError($("#action-error"), null);
      $$("[data-action]").forEach((b) => (b.disabled = true));
      try {
        const op = action === "delete"
          ? await api("DELETE", "/v1/vms/" + id + "?force=true")
          : await api("POST", "/v1/vms/" + id + "/" + action);
        const done = await followOperation(op, (snap) => {
          const current = snap.stages.find((s) => s.status === "running");
          status.textContent = action + ": " + (current ? current.name + "…" : snap.status);
        });
        if (done.status !== "succeeded") throw done.error || { message: action + " failed" };
        if (action === "delete") return (location.href = "/");
        location.reload();
      } catch (err) {
        showError($("#action-error"), err);
        status.textContent = "";
        $$("[data-action]").forEach((b) => (b.disabled = false));
      }
    });
  }

  // Only the actions the VM's state allows are offered (the API refuses the others anyway).
  const allowed = { running: ["stop", "restart", "delete"], stopped: ["start", "delete"], error: ["start", "delete"] };
  const enableActions = (state) => {
    if (status.textContent) return; // an action is in flight
    for (const b of $$("[data-action]")) b.disabled = !(allowed[state] || ["delete"]).includes(b.dataset.action);
  };

  const charts = async () => {
    try {
      const [vm, stats] = await Promise.all([api("GET", "/v1/vms/" + id), api("GET", "/v1/vms/" + id + "/stats")]);
      const badge = $("#vm-state");
      badge.textContent = vm.state;
      badge.className = "state state-" + vm.state;
      enableActions(vm.state);
      const s = stats.samples;
      svgLine($("#chart-cpu"), "a", s.map((x) => x.cpu_percent), 100);
      svgLine($("#chart-mem"), "a", s.map((x) => x.rss_bytes), vm.memory_mib * 1048576);
      svgLine($("#chart-net"), "a", s.map((x) => x.net_rx_bytes_per_sec));
      svgLine($("#chart-net"), "b", s.map((x) => x.net_tx_bytes_per_sec));
      svgLine($("#chart-disk"), "a", s.map((x) => x.block_read_bytes_per_sec));
      svgLine($("#chart-disk"), "b", s.map((x) => x.block_write_bytes_per_sec));
      const l = stats.latest;
      const now = (k, text) => ($(`[data-now="${k}"]`).textContent = l ? text : "–");
      now("cpu", l && pct(l.cpu_percent));
      now("mem", l && bytes(l.rss_bytes) + " of " + bytes(l.guest_memory_bytes));
      now("net", l && (l.io_known ? bytes(l.net_rx_bytes_per_sec) + "/s ↓ " + bytes(l.net_tx_bytes_per_sec) + "/s ↑" : "unknown"));
      now("disk", l && (l.io_known ? bytes(l.block_read_bytes_per_sec) + "/s r " + bytes(l.block_write_bytes_per_sec) + "/s w" : "unknown"));
      $("#stats-note").textContent = s.length + " samples, every " + stats.interval_secs + " s";
      $("#stats-note").dataset.samples = s.length;
    } catch (_) { /* deleted or daemon gone */ }
  };
  charts();
  setInterval(charts, interval);

  // The log pane: the last lines, then every byte appended, over one streamed response.
  let reader = null;
  const pane = $("#log");
  const follow = async (kind) => {
    if (reader) { try { await reader.cancel(); } catch (_) {} }
    pane.textContent = "";
    pane.dataset.kind = kind;
    for (const tab of $$("[data-log]")) tab.setAttribute("aria-selected", String(tab.dataset.log === kind));
    let res;
    try {
      res = await fetch("/v1/vms/" + id + "/logs?kind=" + kind + "&follow=true&tail=300", { credentials: "same-origin" });
    } catch (_) { return; }
    if (!res.ok || !res.body) { pane.textContent = "(log unavailable)"; return; }
    const mine = res.body.getReader();
    reader = mine;
    const decoder = new TextDecoder();
    for (;;) {
      let chunk;
      try { chunk = await mine.read(); } catch (_) { break; }
      if (chunk.done || reader !== mine) break;
      const atBottom = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 8;
      pane.textContent = (pane.textContent + decoder.decode(chunk.value, { stream: true })).slice(-200000);
      if (atBottom) pane.scrollTop = pane.scrollHeight;
    }
  };
  for (const tab of $$("[data-log]")) tab.addEventListener("click", () => follow(tab.dataset.log));
  follow("console");
}

// ---- Images -----------------------------------------------------------------------------
// The register/bootstrap/build routes are offered only when the daemon's OpenAPI document
// lists them; their forms are generated from the request schema.
const IMAGE_ROUTES = {
  register: ["/v1/images/register", "/v1/images"],
  bootstrap: ["/v1/images/bootstrap"],
  build: ["/v1/images/build"],
};

async function imagesPage() {
  for (const button of $$("[data-delete-image]")) {
    button.addEventListener("click", async () => {
      if (!confirm("Delete image " + button.dataset.name + "?")) return;
      try {
        await api("DELETE", "/v1/images/" + button.dataset.deleteImage);
        location.reload();
      } catch (err) { showError($("#image-error"), err); }
    });
  }
  let doc = null;
  try { doc = await api("GET", "/v1/openapi.json"); } catch (_) {}
  for (const card of $$("[data-image-form]")) {
    const slot = $(".slot", card);
    const kind = card.dataset.imageForm;
    const path = doc && IMAGE_ROUTES[kind].find((p) => doc.paths[p] && doc.paths[p].post && doc.paths[p].post.requestBody);
    if (!path) { slot.innerHTML = '<p class="note">not available yet</p>'; continue; }
    slot.innerHTML = "";
    slot.appendChild(schemaForm(doc, doc.paths[path].post, path));
  }
}

function resolveRef(doc, schema) {
  while (schema && schema.$ref) schema = doc.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

function schemaForm(doc, operation, path) {
  const content = operation.requestBody.content["application/json"] || {};
  const schema = resolveRef(doc, content.schema);
  const form = document.createElement("form");
  form.className = "generated";
  form.noValidate = true;
  const props = schema.properties || {};
  for (const [name, prop0] of Object.entries(props)) {
    const prop = resolveRef(doc, prop0);
    const type = [].concat(prop.type || "string").find((t) => t !== "null") || "string";
    const field = document.createElement("div");
    field.className = "field";
    const label = document.createElement("label");
    label.textContent = name + ((schema.required || []).includes(name) ? " *" : "");
    const input = document.createElement(prop.enum ? "select" : "input");
    input.name = name;
    input.dataset.type = type;
    input.dataset.items = type === "array" ? [].concat(resolveRef(doc, prop.items).type || "string")[0] : "";
    if (prop.enum) for (const v of prop.enum) input.add(new Option(v, v));
    if (type === "boolean") input.type = "checkbox";
    if (prop.description) input.title = prop.description;
    if (type === "array") input.placeholder = "comma-separated";
    const error = document.createElement("p");
    error.className = "error";
    error.dataset.errorFor = name;
    field.append(label, input, error);
    form.appendChild(field);
  }
  const general = document.createElement("p");
  general.className = "error";
  general.dataset.errorFor = "";
  const submit = document.createElement("button");
  submit.type = "submit";
  submit.className = "primary";
  submit.textContent = "Submit";
  const progress = document.createElement("ol");
  progress.className = "stages";
  form.append(general, submit, progress);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const box of $$("[data-error-for]", form)) showError(box, null);
    const body = {};
    for (const input of $$("input, select", form)) {
      const t = input.dataset.type;
      if (t === "boolean") { if (input.checked) body[input.name] = true; continue; }
      const v = input.value.trim();
      if (v === "") continue;
      body[input.name] = t === "integer" && /^\d+$/.test(v) ? Number(v)
        : t === "array" ? v.split(",").map((x) => x.trim()).filter(Boolean)
          .map((x) => (input.dataset.items === "integer" && /^\d+$/.test(x) ? Number(x) : x)) : v;
    }
    submit.disabled = true;
    try {
      const answer = await api("POST", path, body);
      if (answer && answer.stages) {
        const done = await followOperation(answer, (snap) => renderStages(progress, snap));
        if (done.status !== "succeeded") throw done.error || { message: "failed" };
      }
      location.reload();
    } catch (err) {
      submit.disabled = false;
      const box = $(`[data-error-for="${err.field || ""}"]`, form) || general;
      showError(box, err);
    }
  });
  return form;
}

const pages = { vms: vmsPage, create: createPage, vm: vmPage, images: imagesPage };
const run = pages[document.body.dataset.page];
if (run) run();

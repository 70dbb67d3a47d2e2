// meshfed dashboard: plain JavaScript, no dependencies. Every page is a view the server pushes over
// Server-Sent Events (/api/stream) whenever the hub's watches deliver a change; buttons POST to
// /api/action, which acts with the user's kubeconfig (the API server decides).
"use strict";

const TOKEN = document.querySelector('meta[name="meshfed-token"]').content;
const view = document.getElementById("view");
const live = document.getElementById("live");
const notice = document.getElementById("notice");
let stream = null;
let current = null;   // the last view pushed
let route = null;

function esc(s) {
  return String(s === undefined || s === null ? "" : s).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("?");
  const path = parts[0].split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(parts[1] || "");
  if (path[0] === "aps") return { v: "aps", ns: params.get("ns") || "", phase: params.get("phase") || "",
                                   waiting: params.get("waiting") || "" };
  if (path[0] === "ap" && path.length >= 3) return { v: "ap", ns: path[1], name: path[2] };
  if (path[0] === "gateways" && path.length >= 3) return { v: "gateways", ns: path[1], name: path[2] };
  return { v: "fleet" };
}

function showNotice(ok, text) {
  notice.className = "notice " + (ok ? "ok" : "bad");
  notice.textContent = text;
  notice.dataset.ok = ok ? "true" : "false";
}

function connect() {
  if (stream) stream.close();
  route = parseRoute();
  current = null;
  document.getElementById("nav-fleet").classList.toggle("active", route.v === "fleet");
  document.getElementById("nav-aps").classList.toggle("active", route.v !== "fleet");
  view.innerHTML = '<p class="muted">loading…</p>';
  const q = new URLSearchParams(Object.entries(route).filter(([, v]) => v)).toString();
  stream = new EventSource("/api/stream?" + q);
  stream.onopen = () => { live.className = "live on"; live.textContent = "live"; };
  stream.onerror = () => { live.className = "live off"; live.textContent = "reconnecting"; };
  stream.onmessage = (ev) => { current = JSON.parse(ev.data); render(); };
}

function errors(data) {
  return Object.entries(data.errors || {}).map(([kind, msg]) =>
    `<div class="error" data-error="${esc(kind)}"><b>${esc(kind)}</b>: ${esc(msg)}</div>`).join("");
}

function render() {
  const data = current;
  if (!data) return;
  const keep = document.activeElement && document.activeElement.id;
  const values = {};  // what the user typed survives a push
  for (const el of view.querySelectorAll("input[id]")) values[el.id] = el.type === "checkbox" ? null : el.value;
  const html = { fleet: renderFleet, aps: renderList, ap: renderAccessPoint, gateways: renderGateways }[data.view](data);
  view.innerHTML = errors(data) + html;
  view.dataset.view = data.view;
  for (const [id, value] of Object.entries(values)) {
    const el = document.getElementById(id);
    if (el && value !== null) el.value = value;
  }
  bind();
  if (keep && document.getElementById(keep)) document.getElementById(keep).focus();
}

// ---- fleet map ----

function renderFleet(d) {
  const t = d.totals || {};
  let out = `<h1>Fleet</h1><div class="totals"><span>${t.clusters || 0} clusters</span>
    <span class="badge ok">${t.ok || 0} ok</span><span class="badge warn">${t.warn || 0} attention</span>
    <span class="badge bad">${t.bad || 0} failing</span><span>${t.accessPoints || 0} AccessPoints</span></div>`;
  for (const r of d.regions || []) {
    out += `<section class="region" data-region="${esc(r.name)}"><h2>region ${esc(r.name)}</h2><div class="zones">`;
    for (const z of r.zones) {
      out += `<div class="zone" data-zone="${esc(z.name)}"><h3>zone ${esc(z.name)}</h3>`;
      for (const c of z.clusters) {
        out += `<div class="cluster level-${c.level}" data-cluster="${esc(c.name)}" data-reachability="${c.reachability}">
          <div class="name">${esc(c.name)} <span class="badge ${c.reachable === false ? "bad" : c.reachable ? "ok" : "warn"}">${c.reachability}</span></div>
          <div class="facts">Ready ${esc(c.ready)} · Kubernetes ${esc(c.version)} · Istio CRDs ${c.istioCRDs === true ? "yes" : c.istioCRDs === false ? "no" : "?"}
            · istiod ${esc(c.istiod)} · <b>${c.accessPoints}</b> AccessPoints</div>
          ${c.problems.map((p) => `<div class="problem">${esc(p)}</div>`).join("")}
        </div>`;
      }
      out += `</div>`;
    }
    out += `</div></section>`;
  }
  if (!(d.regions || []).length && !Object.keys(d.errors || {}).length) out += `<p class="muted">no MemberClusters</p>`;
  return out;
}

// ---- AccessPoint list ----

function renderList(d) {
  const opt = (vals, sel) => `<option value="">all</option>` +
    vals.map((v) => `<option ${v === sel ? "selected" : ""}>${esc(v)}</option>`).join("");
  let out = `<h1>AccessPoints</h1><div class="filters">
    <label>namespace <select id="filter-ns">${opt(d.namespaces, route.ns)}</select></label>
    <label>phase <select id="filter-phase">${opt(d.phases, route.phase)}</select></label>
    <label><input type="checkbox" id="filter-waiting" ${route.waiting ? "checked" : ""}> waiting for approval</label></div>
    <table id="ap-list"><tr><th>Namespace</th><th>Name</th><th>Clusters</th><th>Phase</th><th>VIPs</th><th>Rollout</th>
    <th>Wave</th><th>Updated</th><th>Reason</th><th>Revision</th><th>Routes</th><th>FQDN</th><th>Cert</th><th>Age</th></tr>`;
  for (const r of d.rows) {
    out += `<tr class="level-${r.level}" data-ap="${esc(r.namespace)}/${esc(r.name)}"><td>${esc(r.namespace)}</td>
      <td><a href="#/ap/${encodeURIComponent(r.namespace)}/${encodeURIComponent(r.name)}">${esc(r.name)}</a>
      ${r.waiting ? '<span class="badge warn">awaits approval</span>' : ""}</td>
      <td>${esc(r.clusters)}</td><td>${esc(r.phase)}</td><td>${esc(r.vips)}</td><td>${esc(r.rollout)}</td>
      <td>${esc(r.wave)}</td><td>${esc(r.updated)}</td><td>${esc(r.reason)}</td><td>${esc(r.revision)}</td>
      <td>${esc(r.routes)}</td><td>${esc(r.fqdn)}</td><td>${esc(r.cert)}</td><td>${esc(r.age)}</td></tr>`;
  }
  out += `</table>`;
  if (!d.rows.length) out += `<p class="muted">no AccessPoints match</p>`;
  return out;
}

// ---- one AccessPoint ----

function gate(g, waiting) {
  const cls = g.granted ? "granted" : waiting ? "waiting" : "";
  return `<span class="gate ${cls}">${esc(g.label)}${g.granted ? " ✓ " + esc(g.granted) : waiting ? " — waiting" : ""}</span>`;
}

function renderRollout(ro, d) {
  if (!ro) return `<p class="muted">no rollout reported yet</p>`;
  let out = `<div>Rollout <b id="rollout-phase">${esc(ro.phase)}</b>${ro.reason ? ` (${esc(ro.reason)})` : ""} ·
    revision <code>${esc(ro.revision)}</code> · stable <code>${esc(ro.stable)}</code> · wave ${esc(ro.wave || "-")} ·
    updated ${esc(ro.updated || "-")}</div>`;
  if (ro.message) out += `<div class="muted">${esc(ro.message)}</div>`;
  out += `<div class="timeline" id="timeline">`;
  for (const w of ro.waves) {
    const state = w.state.replace(/[ ()]+/g, "-").replace(/-$/, "");
    out += `<div class="wave state-${esc(state)}" data-wave="${w.number}" data-state="${esc(w.state)}">
      <div class="title">${w.number}. ${esc(w.name)}</div><div class="muted">${esc(w.state)}</div>
      <div class="gates">before: ${w.before.map((g) => gate(g, w.waitingGates.includes("Before"))).join("") || "-"}</div>
      <div class="cl">${w.clusters === null ? "(not frozen)" : esc(w.clusters.join(", ") || "-")}</div>
      <div class="gates">after: ${w.after.map((g) => gate(g, w.waitingGates.includes("After"))).join("") || "-"}</div></div>`;
  }
  out += `</div>`;
  if (ro.pending) {
    const p = ro.pending;
    out += `<div class="pending-gate" id="gate" data-approval="${esc(p.name)}">Waiting for approval: wave ${p.wave}
      <b>${esc(p.waveName)}</b>, ${esc((p.gate || "").toLowerCase())} gate of revision <code>${esc(p.revision)}</code>
      (RolloutApproval ${esc(p.name)})
      <div class="actions"><input type="text" id="decision-message" placeholder="reason (recorded on the approval)" size="40">
      <button class="primary" data-action="approve">Approve</button>
      <button class="danger" data-action="reject">Reject</button></div></div>`;
  }
  out += `<div class="actions">
    <button data-action="promote" ${ro.inProgress ? "" : "disabled"}>Promote (skip remaining gates)</button>
    <button class="danger" data-action="abort" ${ro.inProgress ? "" : "disabled"}>Abort</button>
    <span>Undo to revision <input type="number" id="undo-revision" min="0" value="0" size="4"></span>
    <button data-action="undo">Undo</button></div>`;
  return out;
}

function renderAccessPoint(d) {
  if (d.missing) return `<div class="error">${esc(d.missing)}</div>`;
  const s = d.summary;
  const base = `${encodeURIComponent(d.namespace)}/${encodeURIComponent(d.name)}`;
  let out = `<h1>AccessPoint ${esc(d.namespace)}/${esc(d.name)}</h1>
    <div>Phase <b>${esc(s.phase)}</b> · clusters ready ${esc(s.clusters)} · routes ${esc(s.routes || "-")} ·
    VIPs ${esc(s.vips || "-")} · FQDN ${esc(s.fqdn || "-")} · certificate ${esc(s.certificate || "-")} ·
    generation ${esc(d.generation)} (observed ${esc(d.observedGeneration)}) ·
    <a href="#/gateways/${base}" id="to-gateways">gateways side by side →</a></div>
    <h2>Conditions</h2><table><tr><th>Type</th><th>Status</th><th>Reason</th><th>Message</th></tr>
    ${d.conditions.map((c) => `<tr class="level-${c.status === "True" ? "ok" : "bad"}"><td>${esc(c.type)}</td>
      <td>${esc(c.status)}</td><td>${esc(c.reason)}</td><td>${esc(c.message)}</td></tr>`).join("")}</table>
    <h2>Clusters</h2><table id="clusters"><tr><th>Cluster</th><th>Region/zone</th><th>State</th><th>Revision</th><th>VIP</th>
    <th>FQDN</th><th>Certificate</th><th>Routes</th><th>Proxies</th><th>Istio</th><th>Probe</th><th>Last error</th></tr>`;
  for (const c of d.clusters) {
    const istio = c.istio.map((m) => `<div><a href="${esc(m.url)}" target="_blank" rel="noopener">${esc(m.code)}</a>
      ${esc(m.level)} ${esc(m.object)}</div>`).join("") +
      c.noCurrentVerdict.map((o) => `<div class="muted">${esc(o)}: no current verdict</div>`).join("");
    out += `<tr class="level-${c.level}" data-cluster="${esc(c.name)}"><td>${esc(c.name)}</td><td>${esc(c.region)}/${esc(c.zone)}</td>
      <td>${esc(c.state)}</td><td><code>${esc(c.revision)}</code>${c.onTarget ? "" : ' <span class="badge warn">not target</span>'}</td>
      <td>${esc(c.vip)}</td><td>${esc(c.fqdn)}</td><td>${esc(c.certificate)}</td>
      <td title="${esc(c.routeMessage)}">${esc(c.routes)}${c.routes === "False" ? `<div class="muted">${esc(c.routeMessage)}</div>` : ""}</td>
      <td>${esc(c.proxies)}</td><td>${istio || "-"}</td><td>${esc(c.probe)}</td><td>${esc(c.lastError)}</td></tr>`;
  }
  out += `</table>`;
  if (d.notPlaced.length) out += `<h2>Not placed</h2>` + d.notPlaced.map((r) => `<div>${esc(r.cluster)}: ${esc(r.reason)}</div>`).join("") + (d.notPlacedMore ? `<div>${esc(d.notPlacedMore)}</div>` : "");
  out += `<h2>Rollout</h2>` + renderRollout(d.rollout, d);
  out += `<h2>Approvals</h2><table id="approvals"><tr><th>Name</th><th>Revision</th><th>Wave</th><th>Gate</th><th>Phase</th>
    <th>Decision</th><th>By</th><th>Reason</th></tr>${d.approvals.map((a) => `<tr data-approval="${esc(a.name)}"><td>${esc(a.name)}</td>
    <td><code>${esc(a.revision)}</code></td><td>${esc(a.wave)} ${esc(a.waveName)}</td><td>${esc(a.gate)}</td><td>${esc(a.phase)}</td>
    <td>${esc(a.decision)}</td><td>${esc(a.approver)}</td><td>${esc(a.reason)}</td></tr>`).join("")}</table>`;
  out += `<h2>History</h2>`;
  if (d.historyError) out += `<div class="error">${esc(d.historyError)}</div>`;
  else out += `<table id="history"><tr><th>Revision</th><th>Hash</th><th>Created</th><th>Undo of</th><th></th></tr>
    ${(d.history || []).map((h) => `<tr><td>${h.number}</td><td><code>${esc(h.hash)}</code></td><td>${esc(h.created)}</td>
    <td>${esc(h.undoOf || "-")}</td><td>${h.stable ? '<span class="badge ok">stable</span>' : ""}${h.current && !h.stable ? '<span class="badge warn">rolling out</span>' : ""}</td></tr>`).join("")}</table>`;
  return out;
}

// ---- gateways side by side ----

function renderGateways(d) {
  if (d.missing) return `<div class="error">${esc(d.missing)}</div>`;
  const base = `${encodeURIComponent(d.namespace)}/${encodeURIComponent(d.name)}`;
  let out = `<h1>Gateways side by side: ${esc(d.namespace)}/${esc(d.name)}</h1>
    <div>expected revision <code>${esc(d.revision)}</code> · stable <code>${esc(d.stable || "-")}</code> ·
    <a href="#/ap/${base}">← AccessPoint</a></div>`;
  if (d.traffic && d.traffic.length) {
    out += `<h2>Measured traffic per region (gateway stats)</h2><table id="traffic"><tr><th>Region</th><th>Requests</th><th>Share</th></tr>
      ${d.traffic.map((t) => `<tr><td>${esc(t.region)}</td><td>${t.requests}</td><td><progress max="100" value="${t.share}"></progress> ${t.share}%</td></tr>`).join("")}</table>`;
  }
  out += `<div class="columns" id="columns">`;
  for (const c of d.columns) {
    out += `<div class="gw-column ${c.different ? "different" : ""}" data-cluster="${esc(c.name)}" data-different="${c.different}">
      <h3>${esc(c.name)} ${c.different ? '<span class="badge bad">different</span>' : '<span class="badge ok">as expected</span>'}</h3>
      <div class="muted">${esc(c.region)}/${esc(c.zone)} · ${esc(c.state)} · revision <code>${esc(c.revision)}</code></div>
      ${c.differences.map((x) => `<div class="diff">${esc(x)}</div>`).join("")}`;
    out += `<div><b>expected</b>${c.expected.map((r) => `<div class="route">${esc(r.host)} → ${esc(r.destination)}${r.port ? ":" + r.port : ""} w${r.weight}</div>`).join("") || " -"}</div>`;
    for (const p of c.proxies) {
      out += `<div class="proxy" data-proxy="${esc(p.id)}"><b>${esc(p.id)}</b> <span class="badge ${p.state === "synced" ? "ok" : "bad"}">${esc(p.state)}</span>
        <span class="muted">${Object.entries(p.xds).map(([t, s]) => `${t} ${s}`).join(" · ")}</span>
        ${(p.routes || []).map((r) => `<div class="route">${esc(r.host)} ${esc(r.match)} → ${esc(r.destination)}${r.port ? ":" + r.port : ""} w${r.weight}</div>`).join("") || '<div class="diff">holds no route of this AccessPoint</div>'}</div>`;
    }
    const eps = Object.entries(c.endpoints || {});
    if (eps.length) out += `<div><b>endpoints</b>${eps.map(([cl, hs]) => `<div class="route">${esc(cl)}: ${hs.map(esc).join(", ") || "none"}</div>`).join("")}</div>`;
    if (c.stats) out += `<div><b>stats</b> ${c.stats.error ? `<span class="diff">${esc(c.stats.error)}</span>` : `${c.stats.requests} requests, ${c.stats.errors} 5xx`}</div>`;
    out += `<div class="actions"><button data-detail="${esc(c.name)}">config dump &amp; stats</button></div>
      <div class="detail" id="detail-${esc(c.name)}"></div></div>`;
  }
  out += `</div>`;
  return out;
}

const details = {};

async function loadDetail(cluster) {
  const q = new URLSearchParams({ ns: route.ns, name: route.name, cluster });
  const resp = await fetch("/api/gateway?" + q, { credentials: "same-origin" });
  details[cluster] = await resp.json();
  render();
}

// ---- events ----

function bind() {
  for (const b of view.querySelectorAll("button[data-action]")) b.onclick = () => act(b.dataset.action, b);
  for (const b of view.querySelectorAll("button[data-detail]")) b.onclick = () => loadDetail(b.dataset.detail);
  for (const [cluster, d] of Object.entries(details)) {
    const el = document.getElementById("detail-" + cluster);
    if (el && route.v === "gateways") el.innerHTML = `<pre>${esc(JSON.stringify(d, null, 1))}</pre>`;
  }
  const filters = ["filter-ns", "filter-phase", "filter-waiting"].map((id) => document.getElementById(id));
  if (filters[0]) {
    for (const f of filters) f.onchange = () => {
      const q = new URLSearchParams();
      if (filters[0].value) q.set("ns", filters[0].value);
      if (filters[1].value) q.set("phase", filters[1].value);
      if (filters[2].checked) q.set("waiting", "1");
      location.hash = "#/aps" + (q.toString() ? "?" + q : "");
    };
  }
}

async function act(action, button) {
  const body = { namespace: route.ns, name: route.name, action };
  const msg = document.getElementById("decision-message");
  if (msg && msg.value) body.message = msg.value;
  if (action === "undo") body.toRevision = Number(document.getElementById("undo-revision").value || 0);
  if ((action === "abort" || action === "undo" || action === "promote") &&
      !window.confirm(`${action} the rollout of ${route.ns}/${route.name} as ${document.getElementById("user").textContent}?`)) return;
  button.disabled = true;
  try {
    const resp = await fetch("/api/action", {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Meshfed-Token": TOKEN },
      body: JSON.stringify(body),
    });
    const answer = await resp.json();
    showNotice(answer.ok, (answer.ok ? "✓ " : "✗ ") + answer.message);
  } catch (e) {
    showNotice(false, "✗ " + e);
  } finally {
    button.disabled = false;
  }
}

window.addEventListener("hashchange", () => { notice.className = "notice hidden"; connect(); });
connect();

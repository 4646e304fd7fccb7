// bidsbridge status page: reads the plugin's REST routes (same origin, so Orthanc's own
// authentication applies) and never writes DICOM-derived text as HTML (textContent only:
// series descriptions and error messages come from the scanner and from tools).
"use strict";

const REFRESH_MS = 5000;
const state = { canWrite: false, timer: null };

// -- helpers --------------------------------------------------------------------------------

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  // The routes live one folder up: .../bidsbridge/ui/ -> .../bidsbridge/<path>. A page opened as
  // http://user:password@host/... keeps them in its URL, and fetch refuses URLs with credentials:
  // they are dropped (the browser still answers Orthanc's 401 with the login it remembers).
  const url = new URL("../" + path, location.href);
  url.username = "";
  url.password = "";
  const response = await fetch(url.href, Object.assign({ credentials: "same-origin" }, options || {}));
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (error) {
    body = { error: text };
  }
  if (!response.ok) {
    const error = new Error((body && body.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

function say(text, isError) {
  const message = document.getElementById("message");
  message.textContent = text;
  message.className = isError ? "error" : "ok";
  message.hidden = !text;
}

function seconds(job) {
  const start = Date.parse(job.started_at || "");
  if (Number.isNaN(start)) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  return Math.max(0, (end - start) / 1000);
}

function duration(job) {
  const value = seconds(job);
  if (value === null) return "";
  return value < 60 ? `${value.toFixed(1)} s` : `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

function seriesLink(job) {
  const result = job.result || {};
  const decision = result.decision || {};
  const label = result.series_description || decision.series_description || job.series.slice(0, 17);
  return el("a", { href: `#series/${encodeURIComponent(job.series)}`, title: job.series, text: label });
}

function subjectSession(job) {
  const result = job.result || {};
  if (!result.subject) return "";
  return result.session ? `sub-${result.subject} / ses-${result.session}` : `sub-${result.subject}`;
}

function outputs(job) {
  const files = job.outputs || [];
  if (!files.length) return "";
  return el("details", {}, el("summary", { text: `${files.length} file${files.length === 1 ? "" : "s"}` }),
    el("ul", {}, ...files.map((file) => el("li", {}, el("code", { text: file })))));
}

function decisionCell(job) {
  const decision = (job.result || {}).decision;
  if (!decision) return "";
  const matched = (decision.matched || []).join(", ") || "no rule matched";
  const skip = decision.skip ? ` — ${decision.skip.reason}` : "";
  return el("span", { title: `rules ${decision.rules.source} ${decision.rules.digest}`,
    text: `${decision.outcome} (${matched})${skip}` });
}

function jobRow(job) {
  return el("tr", { "data-job": job.id, class: `state-${job.state}` },
    el("td", { text: job.id }), el("td", { text: job.kind }),
    el("td", {}, el("span", { class: "badge", text: job.state })),
    el("td", {}, seriesLink(job)), el("td", { text: subjectSession(job) }),
    el("td", {}, outputs(job)), el("td", { text: duration(job) }),
    el("td", {}, decisionCell(job)), el("td", { class: "reason", text: job.error || "" }));
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// -- views ----------------------------------------------------------------------------------

async function showStatus() {
  const status = await api("status");
  const jobs = status.jobs || {};
  const counters = ["queued", "running", "done", "skipped", "failed"].map((name) =>
    el("div", { class: `counter state-${name}`, id: `count-${name}` },
      el("strong", { text: jobs[name] || 0 }), el("span", { text: name })));
  document.getElementById("counters").replaceChildren(...counters);
  const workers = status.workers || [];
  const running = jobs.running ? await api("jobs?state=running&limit=100") : [];
  const busy = new Map(running.map((job) => [job.worker_pid, job]));
  const states = workers.map((pid) => {
    const job = busy.get(pid);
    return el("li", { "data-pid": pid }, `worker ${pid}: `,
      job ? el("a", { href: `#series/${encodeURIComponent(job.series)}`, text: `${job.kind} job ${job.id}` }) : "idle");
  });
  document.getElementById("workers").replaceChildren(
    el("span", { text: `${workers.length} worker process${workers.length === 1 ? "" : "es"} alive` +
      (status.enabled === false ? " — the plugin is disabled" : "") +
      (status.bids_root ? ` · BIDS dataset: ${status.bids_root}` : "") }),
    el("ul", { class: "workers" }, ...states));
}

async function showJobs() {
  const jobs = await api("jobs?limit=200");
  fill(document.querySelector("#jobs-table tbody"), jobs.map(jobRow));
  const known = [...new Set(jobs.map((job) => job.series))];
  document.getElementById("known-series").replaceChildren(...known.map((id) => el("option", { value: id })));
}

async function retry(job, button) {
  button.disabled = true;
  try {
    await api(`jobs/${job.id}/retry`, { method: "POST" });
    say(`Job ${job.id} is queued again.`, false);
  } catch (error) {
    say(`Retry of job ${job.id} refused: ${error.message}`, true);
  }
  await refresh();
}

function failureRow(job) {
  const history = (job.history || []).map((attempt) =>
    el("li", {}, el("span", { class: "muted", text: `attempt ${attempt.attempt}, ${attempt.at}: ` }), attempt.reason));
  const button = state.canWrite
    ? el("button", { class: "retry", type: "button", "data-job": job.id, text: "Retry" })
    : null;
  if (button) button.addEventListener("click", () => retry(job, button));
  return el("tr", { "data-job": job.id, class: "state-failed" },
    el("td", { text: job.id }), el("td", {}, seriesLink(job)),
    el("td", { text: `${job.attempts} / ${job.max_attempts}` }), el("td", { text: job.finished_at || "" }),
    el("td", {}, el("div", { class: "reason", text: job.error || "(no reason recorded)" }),
      history.length > 1 ? el("details", {}, el("summary", { text: "every attempt" }), el("ol", {}, ...history)) : null),
    el("td", {}, button));
}

async function showFailures() {
  const jobs = await api("jobs?state=failed&limit=200");
  fill(document.querySelector("#failures-table tbody"), jobs.map(failureRow));
  document.getElementById("failures-empty").hidden = jobs.length > 0;
}

async function showSeries(id) {
  document.getElementById("series-id").textContent = id;
  document.getElementById("series-in-explorer").href = `../../app/explorer.html#series?uuid=${encodeURIComponent(id)}`;
  document.getElementById("series-dry-run").href = `#rules/${encodeURIComponent(id)}`;
  const jobs = await api(`jobs?series=${encodeURIComponent(id)}&limit=50`);
  fill(document.querySelector("#series-jobs-table tbody"), jobs.map(jobRow));
  const empty = document.getElementById("qc-empty");
  const gallery = document.getElementById("qc");
  let pictures = [];
  try {
    pictures = await api(`series/${encodeURIComponent(id)}/qc`);
  } catch (error) {
    gallery.replaceChildren();
    empty.textContent = error.message;
    empty.hidden = false;
    return;
  }
  // Built from the listing's index, relative to this page (the API's url is the absolute route).
  gallery.replaceChildren(...pictures.map((picture, index) =>
    el("figure", {}, el("img", { src: `../series/${encodeURIComponent(id)}/qc/${index}`, alt: picture.path }),
      el("figcaption", {}, el("code", { text: picture.path })))));
  empty.textContent = "This conversion made no QC picture.";
  empty.hidden = pictures.length > 0;
}

function definition(list, term, value) {
  list.append(el("dt", { text: term }), el("dd", {}, value === null || value === undefined ? "—" : value));
}

async function showRules(series) {
  const rules = await api("rules");
  const list = document.getElementById("rules-status");
  list.replaceChildren();
  definition(list, "File", rules.path || "(the shipped default rules)");
  definition(list, "Digest", el("code", { text: rules.digest }));
  definition(list, "Version", rules.version);
  definition(list, "Loaded at", rules.loaded_at);
  definition(list, "Rules, in order", el("ol", {}, ...(rules.rules || []).map((name) => el("li", { text: name }))));
  const refused = document.getElementById("rules-refused");
  refused.hidden = !rules.last_error;
  document.getElementById("rules-last-error").textContent =
    rules.last_error ? `${rules.last_error_at}: ${rules.last_error}` : "";
  if (series) document.getElementById("dry-run-series").value = series;
}

async function dryRun(event) {
  event.preventDefault();
  const request = { series: document.getElementById("dry-run-series").value.trim() };
  if (document.getElementById("dry-run-use-candidate").checked) {
    request.rules = document.getElementById("dry-run-rules").value;
  }
  const box = document.getElementById("dry-run-result");
  const text = document.getElementById("dry-run-text");
  const diagnostics = document.getElementById("dry-run-diagnostics");
  const used = document.getElementById("dry-run-rules-used");
  box.hidden = false;
  diagnostics.replaceChildren();
  try {
    const answer = await api("rules/test", { method: "POST", body: JSON.stringify(request),
      headers: { "Content-Type": "application/json" } });
    used.textContent = `${answer.rules.candidate ? "candidate rules" : "active rules"} ` +
      `${answer.rules.source} [${answer.rules.digest.slice(0, 19)}]; nothing written`;
    text.textContent = answer.text;
    text.className = answer.decision.problems.length ? "problem" : "";
    diagnostics.replaceChildren(...answer.notes.map((note) => el("li", { class: "note", text: note.message })));
  } catch (error) {
    used.textContent = "";
    text.textContent = error.message;
    text.className = "problem";
    const found = (error.body && error.body.diagnostics) || [];
    diagnostics.replaceChildren(...found.map((d) =>
      el("li", { class: d.severity }, `line ${d.line}, column ${d.column}: ${d.message}`,
        d.hint ? el("span", { class: "muted", text: ` — ${d.hint}` }) : null)));
  }
}

// -- routing --------------------------------------------------------------------------------

function route() {
  const [view, argument] = (location.hash.replace(/^#/, "") || "jobs").split("/");
  const name = ["jobs", "failures", "rules", "series"].includes(view) ? view : "jobs";
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${name}`;
  for (const tab of document.querySelectorAll("nav a[id^=tab-]")) {
    tab.classList.toggle("active", tab.id === `tab-${name}`);
  }
  return { name, argument: argument ? decodeURIComponent(argument) : null };
}

async function refresh() {
  const { name, argument } = route();
  try {
    await showStatus();
    if (name === "jobs") await showJobs();
    else if (name === "failures") await showFailures();
    else if (name === "series" && argument) await showSeries(argument);
    document.body.dataset.loaded = "true";
  } catch (error) {
    say(`Cannot read the plugin's status: ${error.message}`, true);
  }
}

async function showView() {
  const { name, argument } = route();
  say("", false);
  if (name === "rules") {
    try {
      await showStatus();
      await showJobs();  // the known series of the dry run's input
      await showRules(argument);
      document.body.dataset.loaded = "true";
    } catch (error) {
      say(`Cannot read the rules: ${error.message}`, true);
    }
  } else {
    await refresh();
  }
}

async function start() {
  try {
    const me = await api("whoami");
    state.canWrite = Boolean(me.can_write);
    document.getElementById("whoami").textContent =
      `${me.user ? `signed in as ${me.user}` : "caller not identified"} · ` +
      (state.canWrite ? "may retry jobs" : "read only");
  } catch (error) {
    say(`Cannot ask who you are: ${error.message}`, true);
  }
  document.getElementById("dry-run-form").addEventListener("submit", dryRun);
  document.getElementById("dry-run-use-candidate").addEventListener("change", (event) => {
    document.getElementById("dry-run-rules").hidden = !event.target.checked;
  });
  window.addEventListener("hashchange", showView);
  await showView();
  state.timer = setInterval(() => {
    if (route().name !== "rules" && !document.hidden) refresh();
  }, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);

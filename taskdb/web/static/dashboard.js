// taskdb dashboard: live updates from Server-Sent Events. Values are only ever
// written with textContent (never innerHTML): nothing from a job can run here.
"use strict";
(function () {
  const body = document.body;
  const base = body.dataset.base || "";
  const page = body.dataset.page;
  const TERMINAL = ["COMPLETED", "FAILED"];
  const live = document.getElementById("live");

  function $(id) { return document.getElementById(id); }

  // Open streams are closed when the page goes away: a browser allows only six
  // connections per host, and a page kept in the back-forward cache would hold its own.
  const sources = [];
  function open(url) {
    const source = new EventSource(url);
    sources.push(source);
    return source;
  }
  window.addEventListener("pagehide", () => sources.forEach((s) => s.close()));
  window.addEventListener("pageshow", (e) => { if (e.persisted) location.reload(); });

  function setBar(el, percent) {
    const p = Math.max(0, Math.min(100, Number(percent) || 0));
    el.style.width = p + "%";
  }

  function setHeights() {
    document.querySelectorAll("[data-h]").forEach((el) => { el.style.height = el.dataset.h + "%"; });
    document.querySelectorAll("[data-w]").forEach((el) => setBar(el, el.dataset.w));
  }

  function changes(query, onChange) {
    const source = open(base + "/api/changes" + query);
    source.addEventListener("change", (e) => onChange(JSON.parse(e.data)));
    source.onopen = () => { if (live) live.classList.add("on"); };
    source.onerror = () => { if (live) live.classList.remove("on"); };
    return source;
  }

  function throttled(fn, ms) {
    let timer = null;
    return function () {
      if (timer === null) timer = setTimeout(() => { timer = null; fn(); }, ms);
    };
  }

  async function getJSON(path) {
    const response = await fetch(base + path, { credentials: "same-origin" });
    if (!response.ok) throw new Error(path + ": " + response.status);
    return response.json();
  }

  // -- overview: counts and the chart follow the feed -------------------------------
  async function refreshOverview() {
    const stats = await getJSON("/api/stats");
    const known = new Set();
    for (const q of stats.queues) {
      const row = document.querySelector('#queues tr[data-queue="' + CSS.escape(q.queue) + '"]');
      if (!row) { location.reload(); return; }  // a new queue: its row needs the server
      known.add(q.queue);
      row.querySelectorAll("[data-status]").forEach((cell) => {
        const link = cell.querySelector("a") || cell;
        link.textContent = String(q.counts[cell.dataset.status] || 0);
      });
      const lag = row.querySelector('[data-field="lag"]');
      lag.textContent = q.oldest_pending_seconds === null ? "-" : Math.round(q.oldest_pending_seconds) + "s";
      row.querySelector('[data-field="done"]').textContent = String(q.completed_last_minute);
    }
    const t = await getJSON("/api/throughput");
    const bars = document.querySelectorAll("#chart .bar");
    const top = Math.max(1, ...t.completed, ...t.failed);
    bars.forEach((bar, i) => {
      if (i >= t.completed.length) return;
      bar.title = t.minutes[i].slice(11, 16) + ": " + t.completed[i] + " completed, " + t.failed[i] + " failed";
      bar.querySelector(".ok").style.height = (100 * t.completed[i] / top) + "%";
      bar.querySelector(".ko").style.height = (100 * t.failed[i] / top) + "%";
    });
  }

  // -- job list: rows follow their jobs; new jobs offer a refresh ----------------------
  function onListChange(c) {
    const row = document.querySelector('#jobs tr[data-job-id="' + c.job_id + '"]');
    if (!row) {
      if (c.kind === "submitted" && body.dataset.firstPage === "yes") $("new-jobs").hidden = false;
      return;
    }
    const status = row.querySelector('[data-field="status"]');
    status.textContent = c.status;
    status.className = "status s-" + c.status.toLowerCase();
    if (c.progress !== null && c.progress !== undefined) {
      row.querySelector('[data-field="progress"]').textContent = Math.round(c.progress) + "%";
    }
  }

  // -- job detail: status, progress, output, stream --------------------------------
  function show(value) {
    return value === null || value === undefined ? "null" : JSON.stringify(value, null, 2);
  }

  function addHistory(c) {
    const body = document.querySelector("#history tbody");
    if (c.kind === "progress" || body.querySelector('tr[data-seq="' + c.seq + '"]')) return;
    const row = document.createElement("tr");
    row.dataset.seq = String(c.seq);
    for (const value of [c.at.slice(0, 19) + "+00:00", c.kind, c.status, String(c.attempts)]) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    row.lastChild.className = "num";
    body.append(row);
  }

  async function refreshJob(id) {
    const job = await getJSON("/api/jobs/" + id);
    const status = $("job-status");
    status.textContent = job.status;
    status.className = "status s-" + job.status.toLowerCase();
    body.dataset.status = job.status;
    setBar($("progress-bar"), job.progress);
    $("progress").setAttribute("aria-valuenow", String(job.progress));
    $("progress-text").textContent = job.progress + "%" + (job.progress_message ? " · " + job.progress_message : "");
    $("attempts").textContent = job.attempts + " of at most " + (job.max_retries + 1);
    $("updated").textContent = job.updated_at;
    if (job.completed_at) $("completed").textContent = job.completed_at;
    $("error").textContent = job.error_code ? job.error_code + ": " + job.error : (job.error || "-");
    if (TERMINAL.includes(job.status)) {
      $("output").textContent = show(job.output);
      const abort = $("abort");
      if (abort) abort.closest("form").hidden = true;
      if (job.error_code === "AbortedJobError" && !$("aborted")) {
        const badge = document.createElement("span");
        badge.className = "badge"; badge.id = "aborted"; badge.textContent = "aborted";
        status.after(" ", badge);
      }
    }
  }

  function followStream(id) {
    const out = $("stream");
    const bytes = {};
    const source = open(base + "/api/jobs/" + id + "/stream");
    source.addEventListener("stream", (e) => {
      const event = JSON.parse(e.data).event;
      if (event.type === "text-delta") out.append(document.createTextNode(event.text));
      else if (event.type === "object-delta") out.append(document.createTextNode(JSON.stringify(event.value) + "\n"));
      else if (event.type === "binary-delta") {
        bytes[event.port] = (bytes[event.port] || 0) + Math.floor(event.chunk.length * 3 / 4);
        $("stream-bytes").textContent = Object.entries(bytes).map(([p, n]) => p + ": " + n + " bytes").join(", ");
      } else if (event.type === "phase") out.append(document.createTextNode("[" + event.message + "]\n"));
    });
    source.addEventListener("end", () => source.close());
  }

  setHeights();
  if (page === "overview") {
    const refresh = throttled(() => refreshOverview().catch(() => {}), 1000);
    changes("", refresh);
  } else if (page === "jobs") {
    const queue = body.dataset.queue;
    changes(queue ? "?queue=" + encodeURIComponent(queue) : "", onListChange);
  } else if (page === "job") {
    const id = body.dataset.jobId;
    const refresh = throttled(() => refreshJob(id).catch(() => {}), 200);
    changes("?job=" + encodeURIComponent(id) + "&after=0", (c) => {
      if (c.progress !== null && c.progress !== undefined) setBar($("progress-bar"), c.progress);
      addHistory(c);
      refresh();
    });
    if (body.dataset.durable === "yes") followStream(id);
  }
})();

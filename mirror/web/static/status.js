// The mirror server's status page: poll /api/jobs and redraw the jobs in place.
// The page is rendered on the server first (mirror/web/mirror_page.py) and this script makes
// the same markup. Text from the network only ever goes in through textContent and
// setAttribute, never as HTML.
"use strict";
(function () {
  const main = document.getElementById("jobs");
  if (!main) { return; }
  const api = main.dataset.api;
  const interval = Number(main.dataset.interval) || 1000;
  const W = 300, H = 60;
  const HEADER = ["SOURCE", "STATUS", "FILES", "DIRS", "BYTES", "MEAN", "VARIANCE(B^2)",
                  "STDDEV", "CV", "SKIPPED", "NOT-EXPORTED", "FAILED", "TIME", "THROUGHPUT"];
  const UNITS = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

  // mirror.text.printable's rule: controls, format and bidi characters, separators but the
  // space, private-use and unassigned code points are shown as escapes, never raw.
  const UNPRINTABLE = /[\p{Cc}\p{Cf}\p{Co}\p{Cn}\p{Cs}\p{Zl}\p{Zp}\p{Zs}]/gu;
  const SHORT = { "\t": "\\t", "\n": "\\n", "\r": "\\r" };
  function printable(text) {
    return String(text).replace(UNPRINTABLE, function (ch) {
      if (ch === " ") { return ch; }
      if (SHORT[ch]) { return SHORT[ch]; }
      const code = ch.codePointAt(0);
      if (code <= 0xff) { return "\\x" + code.toString(16).padStart(2, "0"); }
      if (code <= 0xffff) { return "\\u" + code.toString(16).padStart(4, "0"); }
      return "\\U" + code.toString(16).padStart(8, "0");
    });
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = printable(text); }
    return e;
  }
  function fmtBytes(n) {
    if (n < 1024) { return n.toFixed(0) + " B"; }
    let v = n;
    for (let i = 0; i < UNITS.length; i++) {
      v /= 1024;
      if (v < 1024 || i === UNITS.length - 1) { return v.toFixed(1) + " " + UNITS[i]; }
    }
    return "";
  }
  function fmtRate(n) { return fmtBytes(n) + "/s"; }
  function fmtClock(s) {
    const t = Math.round(Math.max(s, 0));
    const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), sec = t % 60;
    const two = function (x) { return String(x).padStart(2, "0"); };
    return h ? h + ":" + two(m) + ":" + two(sec) : m + ":" + two(sec);
  }
  function fmtSeconds(s) {
    if (s < 10) { return s.toFixed(2) + " s"; }
    if (s < 60) { return s.toFixed(1) + " s"; }
    return fmtClock(s);
  }
  function fmtG4(x) {  // Python's "{:.4g}"
    if (x === 0) { return "0"; }
    const exp = Math.floor(Math.log10(Math.abs(x)));
    if (exp < -4 || exp >= 4) {
      const parts = x.toExponential(3).split("e");
      const mant = parts[0].replace(/\.?0+$/, "");
      const e = Number(parts[1]);
      return mant + "e" + (e < 0 ? "-" : "+") + String(Math.abs(e)).padStart(2, "0");
    }
    const s = x.toPrecision(4);
    return s.indexOf(".") >= 0 ? s.replace(/\.?0+$/, "") : s;
  }
  function utc(s) {
    if (s === null || s === undefined) { return "-"; }
    return new Date(s * 1000).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }
  function label(src) {
    const host = src.host.indexOf(":") >= 0 ? "[" + src.host + "]" : src.host;
    return host + ":" + src.port + ":" + (src.path || ".");
  }
  function status(state) { return state === "ok" ? "ok" : state === "failed" ? "FAILED" : state; }
  function row(name, state, f) {
    return [name, status(state), String(f.files), String(f.dirs), fmtBytes(f.bytes),
            fmtBytes(f.mean_size), fmtG4(f.variance), fmtBytes(f.stddev), f.cv.toFixed(2),
            String(f.skipped), String(f.not_exported), String(f.failed), fmtSeconds(f.elapsed),
            fmtRate(f.throughput)];
  }
  function bar(what, done, total, shown) {
    const div = el("div", "bar");
    div.append(el("span", "what", what));
    const p = el("progress", what);
    p.max = Math.max(total, 1);
    p.value = done;
    div.append(p, el("span", "figure", shown));
    return div;
  }
  function chart(job) {
    const series = job.throughput;
    let peak = 0;
    series.forEach(function (s) { peak = Math.max(peak, s[1]); });
    const fig = el("figure", "chart");
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", "throughput over time");
    const line = document.createElementNS(NS, "polyline");
    if (series.length) {
      const tMax = Math.max(series[series.length - 1][0], 1e-9), rMax = Math.max(peak, 1);
      line.setAttribute("points", series.map(function (s) {
        return (W * s[0] / tMax).toFixed(1) + "," + (H - 2 - (H - 4) * s[1] / rMax).toFixed(1);
      }).join(" "));
    } else {
      line.setAttribute("points", "");
    }
    svg.append(line);
    const caption = job.state === "running"
      ? fmtRate(series.length ? series[series.length - 1][1] : 0) + " now, peak " + fmtRate(peak)
      : fmtRate(job.totals.throughput) + " mean, peak " + fmtRate(peak);
    fig.append(svg, el("figcaption", null, caption));
    return fig;
  }
  function table(job) {
    const box = el("div", "scroll"), t = el("table", "stats");
    const head = el("tr");
    HEADER.forEach(function (h) { head.append(el("th", null, h)); });
    t.append(el("thead"));
    t.tHead.append(head);
    const body = el("tbody");
    const rows = job.sources.map(function (s) { return ["source", row(label(s), s.state, s)]; });
    rows.push(["total", row("TOTAL", job.state, job.totals)]);
    rows.forEach(function (r) {
      const tr = el("tr", r[0]);
      r[1].forEach(function (c) { tr.append(el("td", null, c)); });
      body.append(tr);
    });
    t.append(body);
    box.append(t);
    return box;
  }
  function renderJob(job) {
    const p = job.progress;
    const sec = el("section", "job");
    sec.id = "job-" + job.id;
    sec.dataset.state = job.state;
    const h2 = el("h2", null, "Job " + job.id + " ");
    h2.append(el("span", "state " + job.state, job.state));
    let meta = "started " + utc(job.started) + ", " + fmtSeconds(job.elapsed);
    if (job.state === "running" && !p.listing_done) { meta += ", listing"; }
    sec.append(h2, el("p", "meta", meta),
               bar("files", p.files_done, p.files_total, p.files_done + " / " + p.files_total),
               bar("bytes", p.bytes_done, p.bytes_total,
                   fmtBytes(p.bytes_done) + " / " + fmtBytes(p.bytes_total)),
               chart(job), table(job));
    if (job.errors.length) {
      const ul = el("ul", "errors");
      job.errors.forEach(function (e) {
        const src = job.sources[e.source];
        const li = el("li");
        li.append(el("span", "where", src ? label(src) : String(e.source)), " ",
                  el("code", "path", e.path === null ? "(whole source)" : e.path), " ",
                  el("span", "message", e.message));
        ul.append(li);
      });
      sec.append(ul);
    }
    const more = job.errors_total - job.errors.length;
    if (more > 0) {
      const pm = el("p", "more", more + " more errors: ");
      const a = el("a", null, "/api/jobs/" + job.id);
      a.href = "/api/jobs/" + encodeURIComponent(job.id);
      pm.append(a);
      sec.append(pm);
    }
    return sec;
  }
  function update(view) {
    const jobs = view.jobs.map(renderJob);
    main.replaceChildren.apply(main, jobs.length ? jobs : [el("p", "none", "No job yet.")]);
    const q = view.queue;
    document.getElementById("summary").textContent =
      view.running + " running, queue " + q.depth + " / " + q.capacity;
    document.getElementById("updated").textContent = "as of " + utc(view.now);
    main.dataset.polled = String(Number(main.dataset.polled || 0) + 1);
  }
  function poll() {
    fetch(api, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(update)
      .catch(function (e) {
        document.getElementById("updated").textContent = "not updated: " + e.message;
      })
      .finally(function () { setTimeout(poll, interval); });
  }
  setTimeout(poll, interval);
}());

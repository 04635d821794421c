// The dashboard: numbers, destinations, health and the throughput chart from /api/status,
// every few seconds, without reloading the page. No framework; the chart is drawn on a canvas.
"use strict";
(function () {
  var REFRESH_MS = 5000;

  function pick(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? undefined : o[k]; }, obj);
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }

  function showNumbers(report) {
    document.querySelectorAll("[data-field]").forEach(function (el) {
      var value = pick(report, el.getAttribute("data-field"));
      el.textContent = value == null ? "–" : String(value);
    });
  }

  function showDestinations(report) {
    var body = document.querySelector("#destinations tbody");
    if (!body) { return; }
    var pending = report.node.destinations || {}, totals = report.cluster.destinations || {};
    body.textContent = "";
    Object.keys(pending).forEach(function (name) {
      var d = pending[name], c = totals[name] || {}, row = document.createElement("tr");
      var age = d.oldest_pending_age_seconds;
      cell(row, name);
      cell(row, String(d.pending));
      cell(row, age == null ? "–" : Math.round(age) + " s");
      cell(row, c.forwarded == null ? "–" : String(c.forwarded));
      cell(row, c.dead_lettered == null ? "–" : String(c.dead_lettered));
      body.appendChild(row);
    });
  }

  function showHealth(report) {
    var node = report.node, list = document.getElementById("checks");
    var state = document.getElementById("node-state");
    if (!list || !state) { return; }
    state.textContent = node.running
      ? "Running (pid " + node.pid + ", since " + node.started + "), " +
        (node.healthy ? "healthy" : "unhealthy")
      : "No gateway is serving from this data folder.";
    list.textContent = "";
    var items = [["state database", report.cluster.database === "reachable",
                  report.cluster.database]];
    Object.keys(node.checks || {}).forEach(function (name) {
      var check = node.checks[name];
      items.push([name, check.ok, check.detail]);
    });
    items.forEach(function (item) {
      var li = document.createElement("li");
      li.className = item[1] ? "ok" : "bad";
      li.textContent = item[0] + (item[2] ? ": " + item[2] : "");
      list.appendChild(li);
    });
  }

  function drawChart(series) {
    var canvas = document.getElementById("chart");
    if (!canvas || !canvas.getContext) { return; }
    var ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
    var left = 40, bottom = 24, top = 10, right = 10;
    var styles = getComputedStyle(document.documentElement);
    var colours = { received: styles.getPropertyValue("--received").trim() || "#1f6feb",
                    delivered: styles.getPropertyValue("--delivered").trim() || "#1a7f37" };
    ctx.clearRect(0, 0, w, h);
    var n = series.minutes.length;
    var max = Math.max(1, Math.max.apply(null, series.received.concat(series.delivered, [0])));
    ctx.strokeStyle = "#d8dee5";
    ctx.fillStyle = "#5b6b7c";
    ctx.font = "12px system-ui, sans-serif";
    ctx.beginPath();
    ctx.moveTo(left, top);
    ctx.lineTo(left, h - bottom);
    ctx.lineTo(w - right, h - bottom);
    ctx.stroke();
    ctx.fillText(String(max), 4, top + 10);
    ctx.fillText("0", 4, h - bottom);
    if (n === 0) {
      ctx.fillText("collecting: the first minute appears after a minute", left + 10, h / 2);
      return;
    }
    var slot = (w - left - right) / n, bar = Math.max(1, slot / 2 - 2);
    series.minutes.forEach(function (label, i) {
      var x = left + i * slot + 2;
      ["received", "delivered"].forEach(function (key, k) {
        var v = series[key][i], bh = (h - bottom - top) * v / max;
        ctx.fillStyle = colours[key];
        ctx.fillRect(x + k * (bar + 1), h - bottom - bh, bar, bh);
      });
      if (i % Math.ceil(n / 10) === 0) {
        ctx.fillStyle = "#5b6b7c";
        ctx.fillText(label, x, h - 6);
      }
    });
  }

  function refresh() {
    fetch("/api/status", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) { window.location.assign("/login"); throw new Error("401"); }
        return response.json();
      })
      .then(function (report) {
        if (report.cluster.database === "reachable") {
          showNumbers(report);
          showDestinations(report);
        }
        showHealth(report);
        drawChart(report.throughput);
        var updated = document.getElementById("updated");
        if (updated) { updated.textContent = "updated " + new Date().toLocaleTimeString(); }
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next refresh tries again */ });
  }

  refresh();
  window.setInterval(refresh, REFRESH_MS);
})();

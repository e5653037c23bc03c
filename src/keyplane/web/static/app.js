// keyplane dashboard: small progressive enhancements. Every page works without this file.
(function () {
  "use strict";

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      if (el.dataset.local) return;
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      el.title = el.textContent + (el.dataset.day ? " (UTC day)" : "");
      el.textContent = el.dataset.day
        ? d.toLocaleDateString(undefined, { dateStyle: "medium", timeZone: "UTC" })
        : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
      el.dataset.local = "1";
    });
  }

  function copy(text, button) {
    var done = function () {
      var status = button.closest("dialog, main, body").querySelector(".copy-status");
      var old = button.textContent;
      button.textContent = "Copied";
      if (status) status.textContent = "Copied to the clipboard.";
      setTimeout(function () { button.textContent = old; }, 2000);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(text); done(); });
    } else { fallback(text); done(); }
  }

  function fallback(text) {
    var ta = document.createElement("textarea");
    ta.value = text; ta.setAttribute("readonly", ""); ta.className = "offscreen";
    document.body.appendChild(ta); ta.select();
    try { document.execCommand("copy"); } catch (e) { /* the value stays selectable */ }
    document.body.removeChild(ta);
  }

  document.addEventListener("click", function (e) {
    var b = e.target.closest("[data-copy],[data-copy-text]");
    if (b) {
      var text = b.dataset.copyText;
      if (text === undefined) {
        var input = document.querySelector(b.dataset.copy);
        text = input ? input.value : "";
        if (input) input.select();
      }
      copy(text, b);
      return;
    }
    var back = e.target.closest("[data-back]");
    if (back) { history.back(); }
  });

  // Confirm destructive actions; capture phase so htmx never sees a refused submit.
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { e.preventDefault(); e.stopImmediatePropagation(); }
  }, true);

  function openDialogs(root) {
    root.querySelectorAll("dialog[data-modal]").forEach(function (d) {
      if (d.dataset.shown) return;
      d.dataset.shown = "1";
      if (d.open) d.close();
      d.showModal();
      d.addEventListener("cancel", function (ev) { ev.preventDefault(); });  // closed only by its link
      var input = d.querySelector("input[readonly]");
      if (input) { input.focus(); input.select(); }
    });
  }

  var palette = { requests: ["#4338ca"], tokens: ["#0891b2", "#f59e0b"], cost: ["#16a34a"] };

  function charts(root) {
    if (!window.uPlot) return;
    root.querySelectorAll("[data-chart]").forEach(function (fig) {
      if (fig.dataset.drawn) return;
      var src = document.getElementById(fig.dataset.source);
      if (!src) return;
      var d = JSON.parse(src.textContent);
      var kind = fig.dataset.chart;
      var bars = uPlot.paths.bars({ size: [0.7, 40] });
      var series = [{}], data = [d.t];
      if (kind === "requests") {
        series.push({ label: "Requests", stroke: palette.requests[0], fill: "rgba(67,56,202,.35)", paths: bars, points: { show: false } });
        data.push(d.requests);
      } else if (kind === "tokens") {
        series.push({ label: "Input tokens", stroke: palette.tokens[0], width: 2, points: { size: 5 } });
        series.push({ label: "Output tokens", stroke: palette.tokens[1], width: 2, points: { size: 5 } });
        data.push(d.input, d.output);
      } else {
        series.push({ label: "USD", stroke: palette.cost[0], fill: "rgba(22,163,74,.3)", paths: bars, points: { show: false },
                      value: function (u, v) { return v == null ? "-" : "$" + v.toFixed(2); } });
        data.push(d.cost);
      }
      var fmt = new Intl.NumberFormat(undefined, { notation: "compact" });
      var width = function () { return Math.max(260, fig.clientWidth - 4); };
      var step = d.t.length > 1 ? d.t[1] - d.t[0] : 86400;
      var plot = new uPlot({
        width: width(), height: 200, series: series, legend: { show: true, live: false },
        cursor: { drag: { x: false, y: false } },
        axes: [{ stroke: "#5b6470", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#eef0f3" } },
               { size: 56, stroke: "#5b6470", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#eef0f3" },
                 values: function (u, vals) { return vals.map(function (v) { return fmt.format(v); }); } }],
        scales: { x: { time: true, range: function (u, min, max) { return [min - step / 2, max + step / 2]; } },
                  y: { range: function (u, min, max) { return [0, Math.max(1, max) * 1.1]; } } }
      }, data, fig);
      fig.dataset.drawn = "1";
      if (window.ResizeObserver) {
        new ResizeObserver(function () { plot.setSize({ width: width(), height: 200 }); }).observe(fig);
      }
    });
  }

  function enhance(root) {
    localTimes(root); openDialogs(root); charts(root);
    root.querySelectorAll("[data-back][hidden]").forEach(function (b) { b.hidden = false; });
  }

  document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  document.addEventListener("htmx:afterSwap", function (e) { enhance(e.target); });
})();

// Draws the charts of a manyhands report from the JSON in #report-data, with uPlot.
// Each chart element gets data-points: the data points it holds (the tests read it),
// and window.manyhandsReport keeps the uPlot instances.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var charts = {};
  var COLORS = ["#2f6fdf", "#d9480f", "#2b8a3e", "#9c36b5", "#e8590c", "#0c8599",
                "#c2255c", "#5c940d", "#868e96"];
  var sync = uPlot.sync("time");

  function width() {
    return Math.max(320, document.querySelector("main").clientWidth - 40);
  }

  // Every time chart spans the same stretch: from the first run's start to the last end.
  var bins = data.x;
  var runs = data.runs;
  var lo = Math.min(bins.length ? bins[0] : Infinity, runs.length ? runs[0].start : Infinity);
  var hi = Math.max(bins.length ? bins[bins.length - 1] + data.width : -Infinity,
                    runs.length ? runs[runs.length - 1].end : -Infinity);

  function spanned(x, ys) {
    // The same series with x from lo to hi (a null point at each end if needed).
    var xs = x.slice(), out = ys.map(function (y) { return y.slice(); });
    if (!xs.length || xs[0] > lo) { xs.unshift(lo); out.forEach(function (y) { y.unshift(null); }); }
    if (xs[xs.length - 1] < hi) { xs.push(hi); out.forEach(function (y) { y.push(null); }); }
    return [xs].concat(out);
  }

  function points(series) {
    var n = 0;
    for (var i = 1; i < series.length; i++) {
      for (var j = 0; j < series[i].length; j++) { if (series[i][j] != null) n++; }
    }
    return n;
  }

  function draw(id, opts, series) {
    var el = document.getElementById(id);
    el.dataset.points = String(points(series));
    if (!series[0].length || points(series) === 0) {
      var empty = document.createElement("div");
      empty.className = "empty";
      empty.textContent = "nothing to draw: the journal has no such record";
      el.appendChild(empty);
      return;
    }
    opts.width = width();
    opts.height = opts.height || 220;
    opts.legend = opts.legend || {live: true};
    charts[id] = new uPlot(opts, series, el);
  }

  function timeOpts(ylabel, series, log) {
    return {
      cursor: {sync: {key: sync.key}},
      scales: {x: {time: true}, y: log ? {distr: 3} : {}},
      axes: [{}, {label: ylabel, size: 64}],
      series: [{label: "time"}].concat(series),
    };
  }

  function line(label, i, extra) {
    var s = {label: label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
             points: {show: false}};
    for (var k in extra) { s[k] = extra[k]; }
    return s;
  }

  var rate = {value: function (u, v) { return v == null ? "-" : v.toFixed(1) + "/s"; }};
  draw("throughput",
       timeOpts("items/s", [line("succeeded", 0, rate), line("failed", 1, rate)]),
       spanned(bins, [data.succeeded, data.failed]));

  var ms = {value: function (u, v) { return v == null ? "-" : v.toPrecision(3) + " ms"; }};
  var pct = data.percentiles.map(function (q) { return "p" + q; });
  draw("latency",
       timeOpts("ms", pct.map(function (name, i) { return line(name, i, ms); }), true),
       spanned(bins, pct.map(function (name) { return data.latency[name]; })));

  var types = Object.keys(data.failuresByType);
  draw("failures",
       timeOpts("failed items/s", types.map(function (name, i) { return line(name, i + 1, rate); })),
       spanned(bins, types.map(function (name) { return data.failuresByType[name]; })));

  // Runs: a thick segment per run at the height of its number, breaks between runs.
  var rx = [], ry = [];
  runs.forEach(function (run, i) {
    if (i > 0) { rx.push((runs[i - 1].end + run.start) / 2); ry.push(null); }
    rx.push(run.start); ry.push(run.id);
    rx.push(Math.max(run.end, run.start + 1e-3)); ry.push(run.id);
  });
  var runOpts = timeOpts("run", [line("run", 0, {width: 10, points: {show: true, size: 10},
    value: function (u, v) { return v == null ? "-" : "#" + v; }})]);
  runOpts.scales.y = {range: function (u, a, b) { return [0.5, Math.max(b, 1) + 0.5]; }};
  runOpts.axes[1].incrs = [1, 2, 5, 10, 20, 50, 100];
  runOpts.axes[1].space = 16;
  runOpts.axes[1].values = function (u, ticks) { return ticks.map(function (v) { return "#" + v; }); };
  runOpts.height = 80 + 24 * Math.min(runs.length, 8);
  draw("runs", runOpts, spanned(rx, [ry]));
  // (the number of runs drawn, not of the points that draw their segments)
  document.getElementById("runs").dataset.runs = String(runs.length);

  // Histogram: bars over log-spaced latency buckets.
  var hx = data.histogram.map(function (b) { return Math.sqrt(b[0] * b[1]); });
  var hy = data.histogram.map(function (b) { return b[2]; });
  draw("histogram", {
    scales: {x: {time: false, distr: 3}, y: {range: function (u, a, b) { return [0, b * 1.05]; }}},
    axes: [{label: "ms"}, {label: "items", size: 64}],
    series: [{label: "latency", value: function (u, v) { return v == null ? "-" : v.toPrecision(3) + " ms"; }},
             {label: "items", stroke: COLORS[0], fill: "rgba(47,111,223,0.35)",
              paths: uPlot.paths.bars({size: [0.9, Infinity]}), points: {show: false}}],
  }, [hx, hy]);

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      charts[id].setSize({width: width(), height: charts[id].height});
    });
  });
  window.manyhandsReport = {charts: charts, data: data};
  document.body.dataset.rendered = "yes";
})();

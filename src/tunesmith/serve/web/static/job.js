// A job's page: the loss chart and the events, fed by the job's server-sent event stream.
// The stream replays the job from its first event, so a reload redraws everything; a dropped connection
// resumes by itself (EventSource sends Last-Event-ID, the server continues after it).
(function () {
  "use strict";
  const chartBox = document.getElementById("chart");
  const jobId = chartBox.dataset.job;
  const steps = [], train = [], valid = [], epochs = [], times = [];
  const epochMarks = [], checkpointMarks = [];
  const overlays = [];  // {id, steps, train}
  let total = 0, plot = null, pending = false, wasLive = chartBox.dataset.live === "yes";
  const logBox = document.getElementById("log-scale");
  const smoothBox = document.getElementById("smoothing");

  function smooth(values, factor) {
    if (!factor) return values;
    let last = null;
    return values.map(v => (v == null ? null : (last = last == null ? v : factor * last + (1 - factor) * v)));
  }

  function marks(u) {
    const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
    ctx.save();
    ctx.lineWidth = 1;
    for (const [list, dash, colour] of [[epochMarks, [6, 4], "#888"], [checkpointMarks, [2, 3], "#2f5fd0"]]) {
      ctx.setLineDash(dash);
      ctx.strokeStyle = colour;
      for (const step of list) {
        const x = Math.round(u.valToPos(step, "x", true));
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
      }
    }
    ctx.restore();
  }

  function build() {
    const factor = parseFloat(smoothBox.value);
    const tables = [[steps, smooth(train, factor), valid]];
    for (const o of overlays) tables.push([o.steps, smooth(o.train, factor)]);
    const data = tables.length > 1 ? uPlot.join(tables) : tables[0];
    const series = [
      {label: "step"},
      {label: "training loss", stroke: "#2f5fd0", width: 2},
      {label: "validation loss", stroke: "#d0532f", width: 0, points: {show: true, size: 7, fill: "#d0532f"}, spanGaps: true},
    ];
    const colours = ["#1e7f45", "#9a6700", "#7b3fa0", "#555"];
    overlays.forEach((o, i) => series.push({label: "training loss " + o.id.slice(6, 14), stroke: colours[i % 4], width: 1.5, dash: [4, 2]}));
    const opts = {
      width: Math.max(320, chartBox.clientWidth), height: 320,
      scales: {x: {time: false}, y: {distr: logBox.checked ? 3 : 1}},
      axes: [{label: "step"}, {label: "loss"}],
      series: series,
      hooks: {draw: [marks]},
    };
    if (plot) plot.destroy();
    plot = new uPlot(opts, data, chartBox);
    document.getElementById("points").textContent = steps.length + (steps.length === 1 ? " step" : " steps");
  }

  function redraw() {  // at most once a frame, however many events a replay brings: new points go in with
    if (pending) return;  // setData (the chart stays), a change of options (scale, overlays) rebuilds it
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      if (plot && !overlays.length) {
        plot.setData([steps, smooth(train, parseFloat(smoothBox.value)), valid]);
        document.getElementById("points").textContent = steps.length + (steps.length === 1 ? " step" : " steps");
      } else build();
    });
  }

  function progress() {
    if (!total || !steps.length) return;
    const step = steps[steps.length - 1];
    document.getElementById("progress").value = step / total;
    let text = `step ${step} of ${total}`;
    if (times.length > 1 && step < total && wasLive) {
      const rate = (times[times.length - 1] - times[0]) / (steps[steps.length - 1] - steps[0]);
      if (rate > 0) text += ` · about ${formatSeconds(rate * (total - step))} left`;
    }
    document.getElementById("progress-text").textContent = text;
  }

  function formatSeconds(s) {
    s = Math.round(s);
    return s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : Math.floor(s / 3600) + " h " + Math.floor(s / 60) % 60 + " min";
  }

  function addEvent(kind, e) {
    if (kind === "step" && e.data.valid_loss == null) return;  // every step is on the chart; the list keeps the rest
    const li = document.createElement("li");
    li.className = e.level;
    li.dataset.kind = kind;
    li.textContent = new Date(e.created_at * 1000).toLocaleTimeString() + "  " + e.message;
    document.getElementById("events").appendChild(li);
  }

  const source = new EventSource(`/jobs/${jobId}/stream`);
  source.addEventListener("step", msg => {
    const e = JSON.parse(msg.data), d = e.data;
    const previous = epochs.length ? epochs[epochs.length - 1] : 0;
    steps.push(d.step); train.push(d.train_loss); valid.push(d.valid_loss ?? null);
    epochs.push(d.epoch); times.push(e.created_at); total = d.total_steps;
    if (Math.floor(d.epoch + 1e-9) > Math.floor(previous + 1e-9) && d.step < total) epochMarks.push(d.step);
    addEvent("step", e); progress(); redraw();
  });
  source.addEventListener("checkpoint", msg => {
    const e = JSON.parse(msg.data);
    checkpointMarks.push(e.data.step); addEvent("checkpoint", e); redraw();
  });
  source.addEventListener("message", msg => addEvent("message", JSON.parse(msg.data)));
  source.addEventListener("comparison", msg => addEvent("comparison", JSON.parse(msg.data)));
  source.addEventListener("status", msg => {
    const s = JSON.parse(msg.data).status, badge = document.getElementById("status");
    if (badge.textContent !== s) {
      badge.textContent = s; badge.className = "status " + s;
      // a job that ends while watched: the page as the server draws a finished job (its comparison)
      if (wasLive && !["validating_files", "queued", "running"].includes(s)) setTimeout(() => location.reload(), 500);
    }
  });
  source.addEventListener("end", () => source.close());

  logBox.addEventListener("change", build);
  smoothBox.addEventListener("input", redraw);
  window.addEventListener("resize", build);
  document.getElementById("overlay").addEventListener("change", async ev => {
    const id = ev.target.value;
    ev.target.value = "";
    if (!id || overlays.some(o => o.id === id)) return;
    const got = await (await fetch(`/jobs/${id}/metrics.json`)).json();
    overlays.push({id: id, steps: got.points.map(p => p.step), train: got.points.map(p => p.train_loss)});
    build();
  });
  build();
})();

// VIVA for ComfyUI: show each node's result on the node after it runs.
//
// The Python nodes return UI data (see nodes/*.py):   {"text": [str], "viva_scores": [{scores: {EA, PC, GN, GR}, label}],
// "viva_curve": [{points: [[step, loss, reward], ...], total}]}
// - "text" goes into a read-only multiline box at the bottom of the node (like core's Preview Any);
// - "viva_scores" (Judge, Best-of-N) is drawn as a small bar chart of P(Yes) per question;
// - Train LoRA draws a live loss (and reward) curve: the server sends a "viva.train" websocket event per logged
//   step ({node, total, start, history} when a run starts, then {node, total, step, loss, reward}, and
//   {node, total, step, interrupted} when it is cancelled), and the final "viva_curve" of the run when it ends.
// The widgets are added on the first result, are never saved in the workflow nor sent with the prompt,
// and any error here is caught and logged, so the graph keeps working whatever happens.
// Only the frontend's public extension API is used (app, api, LGraphNode.addDOMWidget / addCustomWidget): internal
// modules such as scripts/widgets.js may change without notice (frontend 1.58 warns about them).
// web/js/viva.js is served at /extensions/<pack>/js/viva.js, so the frontend's scripts are three levels up.
import { api } from "../../../scripts/api.js";
import { app } from "../../../scripts/app.js";

const TRAIN_NODE = "VIVA_TrainLoRA";
const TEXT_NODES = new Set([
  "VIVA_LoadEditor", "VIVA_LoraLoader", "VIVA_EncodeInstruction", "VIVA_EditVideo", "VIVA_BestOfN", "VIVA_Judge",
  "VIVA_DatasetFromFolder", TRAIN_NODE,
]);
const CHART_NODES = new Set(["VIVA_BestOfN", "VIVA_Judge"]);
const DIMENSIONS = ["EA", "PC", "GN", "GR"]; // edit accuracy, preservation, naturalness, realism
const TEXT_WIDGET = "viva_result";
const CHART_WIDGET = "viva_scores";
const CHART_HEIGHT = 4 * 14 + 18;
const CURVE_WIDGET = "viva_curve";
const CURVE_HEIGHT = 112;
const CURVE_EVENT = "viva.train";
const MAX_POINTS = 2000; // a long run keeps every other point once this many are stored
const SERIES = [ // [index in a point, label, colour]
  [1, "loss", "#5fb4ff"],
  [2, "reward", "#f2b33d"],
];

const nodeId = (node) => node.comfyClass ?? node.type;

function notSaved(widget) {
  widget.serialize = false; // not in the workflow's widgets_values
  widget.options = widget.options || {};
  widget.options.serialize = false; // not sent to the server with the prompt
  return widget;
}

const TEXT_FONT_PX = 11, TEXT_LINE_PX = 14, TEXT_MAX_ROWS = 16;
let textCharPx = 0; // the width of a character of the box's font, measured once (fonts differ between systems)
const TEXT_CHROME_PX = 14 + 2 * 10; // the box's padding and border, and the frontend's DOM widget margin (10 px)
const TABLE_NODE = "VIVA_BestOfN"; // its text is a table: columns kept (no wrapping), the node widened to fit it

// A read-only text box under the node's widgets (a DOM widget, as core's Preview Any shows text). Its height is
// set from the text by showResult, so the node's layout reserves exactly those rows.
function textWidget(node) {
  let widget = node.widgets?.find((w) => w.name === TEXT_WIDGET);
  if (!widget) {
    const el = document.createElement("textarea");
    el.readOnly = true;
    el.spellcheck = false;
    el.title = "Result of the last run (read-only)";
    Object.assign(el.style, { fontFamily: "monospace", fontSize: `${TEXT_FONT_PX}px`, lineHeight: `${TEXT_LINE_PX}px`,
      whiteSpace: nodeId(node) === TABLE_NODE ? "pre" : "pre-wrap", overflow: "auto", resize: "none",
      boxSizing: "border-box", width: "100%", height: "100%", padding: "4px 6px", margin: "0",
      color: "var(--input-text, #ddd)", background: "var(--comfy-input-bg, #222)",
      border: "1px solid var(--border-color, #444)", borderRadius: "4px" });
    const state = { height: 2 * TEXT_LINE_PX + TEXT_CHROME_PX };
    widget = notSaved(node.addDOMWidget(TEXT_WIDGET, "viva_text", el, {
      serialize: false,
      hideOnZoom: false,
      getValue: () => el.value,
      setValue: (v) => { el.value = v ?? ""; },
      getMinHeight: () => state.height,
      getMaxHeight: () => state.height,
    }));
    widget.vivaState = state;
  }
  return widget;
}

// Rows and width the text needs, up to 16 rows (scroll for more: a VLM's rationale can be long): every line of a
// table at its full width; other text wraps at the node's width.
function textLayout(node, value) {
  const lines = value.split("\n");
  const charPx = charWidth();
  if (nodeId(node) === TABLE_NODE) {
    const longest = Math.max(...lines.map((l) => l.length));
    return { rows: Math.min(TEXT_MAX_ROWS, Math.max(2, lines.length)), width: Math.min(640, Math.ceil(longest * charPx) + 48) };
  }
  const perLine = Math.max(20, Math.floor((node.size[0] - 56) / charPx)); // margins, padding, scroll bar
  const rows = lines.reduce((n, l) => n + wrappedRows(l, perLine), 0);
  return { rows: Math.min(TEXT_MAX_ROWS, Math.max(2, rows)), width: 0 };
}

// The box's monospace font measured on a canvas (a fixed 6.7 px, right for one system's font, came a row short a
// line on another's, and the Judge's text scrolled).
function charWidth() {
  if (!textCharPx) {
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.font = `${TEXT_FONT_PX}px monospace`;
    textCharPx = ctx.measureText("0".repeat(100)).width / 100 || 6.7;
  }
  return textCharPx;
}

// Rows one line takes when the box wraps it (pre-wrap breaks at spaces, so a row holds whole words: counting
// characters alone comes up a row short on long sentences); a word longer than a row is broken.
function wrappedRows(line, perLine) {
  let rows = 1, used = 0;
  for (const word of line.split(" ")) {
    if (used > 0 && used + 1 + word.length > perLine) { rows += 1; used = 0; }
    used += (used > 0 ? 1 : 0) + word.length;
    while (used > perLine) { rows += 1; used -= perLine; }
  }
  return rows;
}

function drawChart(ctx, data, width, y) {
  const scores = data?.scores || {};
  const x0 = 14, labelW = 26, valueW = 40, rowH = 14;
  const barW = Math.max(20, width - 2 * x0 - labelW - valueW);
  ctx.save();
  ctx.font = "11px monospace";
  ctx.textBaseline = "middle";
  ctx.fillStyle = "#aaa";
  ctx.textAlign = "left";
  ctx.fillText(`P(Yes)${data?.label ? "  ·  " + data.label : ""}`, x0, y + 7);
  DIMENSIONS.forEach((code, i) => {
    const value = Number(scores[code]);
    const cy = y + 16 + i * rowH;
    ctx.fillStyle = "#ccc";
    ctx.textAlign = "left";
    ctx.fillText(code, x0, cy + rowH / 2);
    ctx.fillStyle = "#333";
    ctx.fillRect(x0 + labelW, cy + 2, barW, rowH - 4);
    if (Number.isFinite(value)) {
      const v = Math.min(1, Math.max(0, value));
      ctx.fillStyle = `hsl(${Math.round(120 * v)}, 55%, 45%)`; // red (0) .. green (1)
      ctx.fillRect(x0 + labelW, cy + 2, barW * v, rowH - 4);
    }
    ctx.fillStyle = "#ddd";
    ctx.textAlign = "right";
    ctx.fillText(Number.isFinite(value) ? value.toFixed(3) : "n/a", x0 + labelW + barW + valueW, cy + rowH / 2);
  });
  ctx.restore();
}

function chartWidget(node) {
  let widget = node.widgets?.find((w) => w.name === CHART_WIDGET);
  if (!widget) {
    // A canvas widget rather than onDrawForeground: the layout then reserves its rows, so the multiline
    // text box (which takes all the free height) never covers the chart.
    widget = notSaved(node.addCustomWidget({
      name: CHART_WIDGET,
      type: "viva_chart",
      value: null,
      computeSize: (width) => [width, CHART_HEIGHT],
      draw(ctx, _node, width, y) {
        if (this.value) drawChart(ctx, this.value, width, y);
      },
    }));
  }
  return widget;
}

function fmt(v) {
  if (!Number.isFinite(v)) return "n/a";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(2) : v.toPrecision(4);
}

// Exponential moving average of a series (as TensorBoard's smoothing), so a noisy loss still shows its trend.
function smoothed(values, weight = 0.8) {
  let acc = null;
  return values.map((v) => (acc = acc === null ? v : weight * acc + (1 - weight) * v));
}

function drawCurve(ctx, data, width, y) {
  const points = data?.points || [];
  const present = SERIES.filter(([i]) => points.some((p) => Number.isFinite(p[i])));
  const gutter = 40; // value labels left (first series) and right (second series) of the plot
  const x0 = 14 + gutter, top = y + 16, h = CURVE_HEIGHT - 30;
  const w = Math.max(40, width - 28 - gutter * (present.length > 1 ? 2 : 1));
  const last = points[points.length - 1];
  const maxStep = Math.max(1, ...points.map((p) => p[0] || 0)); // the axis grows with the run (total may be huge)
  ctx.save();
  ctx.font = "11px monospace";
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  // header: latest value of each series in its colour, then the step count
  let hx = 14;
  for (const [i, label, colour] of present) {
    const text = `${label} ${fmt(last?.[i])}`;
    ctx.fillStyle = colour;
    ctx.fillText(text, hx, y + 7);
    hx += ctx.measureText(text).width + 12;
  }
  ctx.textAlign = "right";
  if (Number.isFinite(data?.interrupted)) {
    ctx.fillStyle = "#e8a33d";
    ctx.fillText(`interrupted at step ${data.interrupted} · resume continues`, width - 14, y + 7);
  } else {
    ctx.fillStyle = "#aaa";
    ctx.fillText(points.length ? `step ${last[0]}/${data.total ?? "?"}` : "waiting for the first step", width - 14, y + 7);
  }
  // plot area, with the step axis (0 .. total) below it
  ctx.fillStyle = "#222";
  ctx.fillRect(x0, top, w, h);
  ctx.strokeStyle = "#444";
  ctx.lineWidth = 1;
  ctx.strokeRect(x0 + 0.5, top + 0.5, w - 1, h - 1);
  ctx.font = "9px monospace";
  ctx.fillStyle = "#888";
  ctx.textAlign = "left";
  ctx.fillText("0", x0, top + h + 7);
  ctx.textAlign = "right";
  ctx.fillText(String(maxStep), x0 + w, top + h + 7);
  // each series on its own scale (min at the bottom, max at the top): raw values faint, smoothed trend solid
  present.forEach(([i, , colour], k) => {
    const pts = points.filter((p) => Number.isFinite(p[i]));
    let lo = Math.min(...pts.map((p) => p[i])), hi = Math.max(...pts.map((p) => p[i]));
    if (hi - lo < 1e-12) { lo -= 0.5 * (Math.abs(lo) || 1); hi += 0.5 * (Math.abs(hi) || 1); }
    const px = (s) => x0 + 3 + (w - 6) * (s / maxStep);
    const py = (v) => top + h - 4 - (h - 8) * ((v - lo) / (hi - lo));
    const line = (values, alpha, lw) => {
      ctx.globalAlpha = alpha;
      ctx.lineWidth = lw;
      ctx.beginPath();
      pts.forEach((p, j) => (j ? ctx.lineTo(px(p[0]), py(values[j])) : ctx.moveTo(px(p[0]), py(values[j]))));
      ctx.stroke();
    };
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    const raw = pts.map((p) => p[i]);
    if (pts.length > 3) {
      line(raw, 0.35, 1);
      line(smoothed(raw), 1, 1.8);
    } else {
      line(raw, 1, 1.5);
    }
    ctx.globalAlpha = 1;
    if (pts.length === 1) ctx.fillRect(px(pts[0][0]) - 2, py(pts[0][i]) - 2, 4, 4);
    ctx.font = "9px monospace";
    ctx.textAlign = k === 0 ? "right" : "left";
    const lx = k === 0 ? x0 - 4 : x0 + w + 4;
    ctx.fillText(fmt(hi), lx, top + 5);
    ctx.fillText(fmt(lo), lx, top + h - 5);
  });
  ctx.restore();
}

function curveWidget(node) {
  let widget = node.widgets?.find((w) => w.name === CURVE_WIDGET);
  if (!widget) {
    widget = notSaved(node.addCustomWidget({
      name: CURVE_WIDGET,
      type: "viva_curve",
      value: null,
      computeSize: (width) => [width, CURVE_HEIGHT],
      draw(ctx, _node, width, y) {
        drawCurve(ctx, this.value, width, y);
      },
    }));
    fitContent(node);
  }
  return widget;
}

// The node a server-side unique id names: "12", or "4:12" for a node inside subgraph node 4.
function findNode(id) {
  let graph = app.graph, node = null;
  for (const part of String(id).split(":")) {
    node = graph?.getNodeById?.(part) ?? graph?.getNodeById?.(Number(part)) ?? null;
    graph = node?.subgraph;
  }
  return node;
}

function onTrainEvent(detail) {
  const node = detail && findNode(detail.node);
  if (!node || nodeId(node) !== TRAIN_NODE) return;
  const widget = curveWidget(node);
  if (detail.start || !widget.value) {
    widget.value = { points: Array.isArray(detail.history) ? detail.history.slice() : [], total: detail.total };
  }
  if (detail.interrupted) {
    widget.value.interrupted = detail.step; // a checkpoint of this step was kept
  } else if (Number.isFinite(detail.step)) {
    const points = widget.value.points;
    points.push([detail.step, detail.loss ?? null, detail.reward ?? null]);
    if (points.length > MAX_POINTS) widget.value.points = points.filter((_, j) => j % 2 === 0 || j === points.length - 1);
    widget.value.total = detail.total;
  }
  node.setDirtyCanvas?.(true, true);
}

// Grow the node to what its widgets need (never shrink what the user sized). Only a table widens it; other text
// wraps, so a node does not spread over its right-hand neighbours.
function fitContent(node, width = 0) {
  const [w, h] = node.computeSize();
  node.setSize([Math.max(node.size[0], w, width), Math.max(node.size[1], h)]);
  node.setDirtyCanvas?.(true, true);
}

function showResult(node, message) {
  const text = message?.text;
  const scores = message?.viva_scores;
  if (CHART_NODES.has(nodeId(node)) && Array.isArray(scores) && scores.length) {
    chartWidget(node).value = scores[scores.length - 1];
  }
  const curve = message?.viva_curve;
  if (nodeId(node) === TRAIN_NODE && Array.isArray(curve) && curve.length) {
    curveWidget(node).value = { points: (curve[curve.length - 1].points || []).slice(), total: curve[curve.length - 1].total };
  }
  let width = 0;
  if (Array.isArray(text) && text.length) {
    const value = text.join("\n");
    const widget = textWidget(node);
    widget.value = value;
    const layout = textLayout(node, value);
    widget.vivaState.height = layout.rows * TEXT_LINE_PX + TEXT_CHROME_PX;
    width = layout.width;
  }
  fitContent(node, width);
}

// The Judge node's rationale is offered only when its VLM can write text: a judge trained on Yes/No answers (such
// as viva-small-judge; the server lists them) would write junk, so there the toggle is switched off and disabled.
const JUDGE_NODE = "VIVA_Judge", VLM_NODE = "VIVA_LoadVLM", RATIONALE = "rationale";
let yesNoOnly = new Set();

function linkedNode(node, inputName) {
  const id = node.inputs?.find((i) => i.name === inputName)?.link;
  if (id == null || !node.graph) return null;
  const link = node.graph.getLink?.(id) ?? node.graph.links?.get?.(id) ?? node.graph.links?.[id];
  return link ? node.graph.getNodeById(link.origin_id) : null;
}

function syncRationale(judge) {
  const widget = judge.widgets?.find((w) => w.name === RATIONALE);
  if (!widget) return;
  const vlm = linkedNode(judge, "vlm");
  const model = vlm && nodeId(vlm) === VLM_NODE ? vlm.widgets?.find((w) => w.name === "model")?.value : null;
  const off = model != null && yesNoOnly.has(model);
  widget.disabled = off;
  widget.label = off ? "rationale (this judge answers Yes/No only)" : undefined;
  if (off && widget.value) widget.value = false;
  judge.setDirtyCanvas?.(true, true);
}

function syncAllRationales() {
  for (const node of app.graph?._nodes ?? []) if (nodeId(node) === JUDGE_NODE) syncRationale(node);
}

app.registerExtension({
  name: "VIVA.NodeResults",
  async setup() {
    try {
      yesNoOnly = new Set(await (await api.fetchApi("/viva/yes_no_only_vlms")).json());
      syncAllRationales();
    } catch (err) {
      console.warn("[VIVA] could not read which VLMs answer Yes/No only:", err);
    }
    api.addEventListener(CURVE_EVENT, (event) => {
      try {
        onTrainEvent(event.detail);
      } catch (err) {
        console.warn("[VIVA] could not draw the training curve:", err);
      }
    });
  },
  afterConfigureGraph() {
    syncAllRationales();
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === JUDGE_NODE) {
      const onConnectionsChange = nodeType.prototype.onConnectionsChange;
      nodeType.prototype.onConnectionsChange = function () {
        const r = onConnectionsChange?.apply(this, arguments);
        try { syncRationale(this); } catch (err) { console.warn("[VIVA] rationale toggle:", err); }
        return r;
      };
    }
    if (nodeData?.name === VLM_NODE) { // picking another VLM updates the judges it feeds
      const onWidgetChanged = nodeType.prototype.onWidgetChanged;
      nodeType.prototype.onWidgetChanged = function (name) {
        const r = onWidgetChanged?.apply(this, arguments);
        if (name === "model") setTimeout(syncAllRationales, 0);
        return r;
      };
    }
    if (!TEXT_NODES.has(nodeData?.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      try {
        showResult(this, message);
      } catch (err) {
        console.warn("[VIVA] could not show the node result:", err);
      }
      return r;
    };
  },
});

// VIVA for ComfyUI: show each node's result on the node after it runs.
//
// The Python nodes return UI data (see nodes/*.py):   {"text": [str], "viva_scores": [{scores: {EA, PC, GN, GR}, label}]}
// - "text" goes into a read-only multiline box at the bottom of the node (like core's Preview Any);
// - "viva_scores" (Judge, Best-of-N) is drawn as a small bar chart of P(Yes) per question.
// Both widgets are added on the first result, are never saved in the workflow nor sent with the prompt,
// and any error here is caught and logged, so the graph keeps working whatever happens.
// web/js/viva.js is served at /extensions/<pack>/js/viva.js, so the frontend's scripts are three levels up.
import { app } from "../../../scripts/app.js";
import { ComfyWidgets } from "../../../scripts/widgets.js";

const TEXT_NODES = new Set([
  "VIVA_LoadEditor", "VIVA_LoraLoader", "VIVA_EncodeInstruction", "VIVA_EditVideo", "VIVA_BestOfN", "VIVA_Judge",
]);
const CHART_NODES = new Set(["VIVA_BestOfN", "VIVA_Judge"]);
const DIMENSIONS = ["EA", "PC", "GN", "GR"]; // edit accuracy, preservation, naturalness, realism
const TEXT_WIDGET = "viva_result";
const CHART_WIDGET = "viva_scores";
const CHART_HEIGHT = 4 * 14 + 18;

const nodeId = (node) => node.comfyClass ?? node.type;

function notSaved(widget) {
  widget.serialize = false; // not in the workflow's widgets_values
  widget.options = widget.options || {};
  widget.options.serialize = false; // not sent to the server with the prompt
  return widget;
}

function textWidget(node) {
  let widget = node.widgets?.find((w) => w.name === TEXT_WIDGET);
  if (!widget) {
    widget = notSaved(ComfyWidgets.STRING(node, TEXT_WIDGET, ["STRING", { multiline: true }], app).widget);
    const el = widget.element || widget.inputEl;
    if (el) {
      el.readOnly = true;
      el.style.fontFamily = "monospace";
      el.style.fontSize = "11px";
      // a Best-of-N table keeps its columns (scroll sideways); other results wrap
      el.style.whiteSpace = nodeId(node) === "VIVA_BestOfN" ? "pre" : "pre-wrap";
      el.style.overflow = "auto";
      el.title = "Result of the last run (read-only)";
    }
  }
  return widget;
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

function fitContent(node) {
  const [w, h] = node.computeSize();
  node.setSize([Math.max(node.size[0], w), Math.max(node.size[1], h)]);
  node.setDirtyCanvas?.(true, true);
}

function showResult(node, message) {
  const text = message?.text;
  const scores = message?.viva_scores;
  if (CHART_NODES.has(nodeId(node)) && Array.isArray(scores) && scores.length) {
    chartWidget(node).value = scores[scores.length - 1];
  }
  if (Array.isArray(text) && text.length) {
    const value = text.join("\n");
    const widget = textWidget(node);
    widget.value = value;
    // room for up to 8 lines; the node grows down, never sideways (it would cover its neighbours)
    const perLine = Math.max(20, Math.floor((node.size[0] - 30) / 6.7));
    const wraps = nodeId(node) !== "VIVA_BestOfN";
    const lines = value.split("\n").reduce((n, l) => n + (wraps ? Math.max(1, Math.ceil(l.length / perLine)) : 1), 0);
    const rows = Math.min(8, Math.max(2, lines));
    widget.computeLayoutSize = () => ({ minHeight: 12 + rows * 14, minWidth: 0 });
  }
  fitContent(node);
}

app.registerExtension({
  name: "VIVA.NodeResults",
  async beforeRegisterNodeDef(nodeType, nodeData) {
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

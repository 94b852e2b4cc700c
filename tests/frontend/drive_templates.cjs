// Drives the real ComfyUI frontend in headless Chromium (playwright-core) for tests/test_workflows_frontend.py.
//
//   node drive_templates.cjs '<json job>'      ->  one JSON object on the last line of stdout
//
// job: {base, chromium, module, templates: [{name, run: bool, overrides?: {nodeType: {widget: value}}, label?}],
//       timeout_s, shots: dir|null, browse: bool}
// For each template it does what the Templates menu does (fetch /api/workflow_templates/<module>/<name>.json, then
// app.loadGraphData), converts the graph with the frontend's own app.graphToPrompt(), and for `run` queues that
// prompt from the page (so the page's extensions get the results), waits for /history and measures the time.
// It reports, per template: node types the frontend does not know, the API prompt, run status/seconds, and nodes
// whose boxes (title bar included) overlap after loading and after the run; plus console warnings of the page.
// Only the frontend's public objects are used (window.comfyAPI.app.app / .api.api, LiteGraph).
"use strict";
const { chromium } = require(process.env.PLAYWRIGHT_CORE || "playwright-core");

const job = JSON.parse(process.argv[2]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function ready(page) {
  await page.goto(job.base, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => {
    const app = window.comfyAPI?.app?.app;
    return app?.graph && app.canvas && window.LiteGraph?.registered_node_types?.VIVA_EditVideo;
  }, null, { timeout: 120000 });
  await sleep(1500); // first-run dialogs (templates browser, release notes) open after start-up
  await page.keyboard.press("Escape");
  await page.evaluate(async () => { // the minimap would cover nodes, and badges name the test's pack folder
    const setting = window.comfyAPI.app.app.extensionManager?.setting;
    await setting?.set?.("Comfy.Minimap.Visible", false);
    await setting?.set?.("Comfy.NodeBadge.NodeSourceBadgeMode", "None");
  }).catch(() => {});
}

// Node boxes in graph space, the title bar included, and the pairs that intersect.
function overlaps(page) {
  return page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    const th = window.LiteGraph.NODE_TITLE_HEIGHT;
    const boxes = app.graph._nodes.map((n) => ({ id: n.id, title: n.title, x: n.pos[0], y: n.pos[1] - th,
      w: n.size[0], h: n.size[1] + th }));
    const hits = [];
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h) hits.push([a.title, b.title]);
      }
    }
    return hits;
  });
}

async function fitView(page) {
  await page.evaluate(() => {
    const app = window.comfyAPI.app.app;
    const th = window.LiteGraph.NODE_TITLE_HEIGHT;
    const nodes = app.graph._nodes;
    const x0 = Math.min(...nodes.map((n) => n.pos[0])) - 20, y0 = Math.min(...nodes.map((n) => n.pos[1] - th)) - 20;
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + 20;
    const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + 20;
    const el = app.canvas.canvas;
    const left = 80; // newer frontends draw their sidebar over the canvas
    const w = el.clientWidth - left, h = el.clientHeight - 40;
    const scale = Math.min(w / (x1 - x0), h / (y1 - y0), 1.2);
    app.canvas.ds.scale = scale; // offset element-wise: newer frontends keep it in a typed array
    app.canvas.ds.offset[0] = (w / scale - (x1 - x0)) / 2 - x0 + left / scale;
    app.canvas.ds.offset[1] = (h / scale - (y1 - y0)) / 2 - y0 + 40 / scale;
    app.canvas.setDirty(true, true);
  });
  await sleep(700); // DOM widgets follow the canvas on the next frames
}

async function runPrompt(page, output, workflow) {
  const queued = await page.evaluate(async ({ output, workflow }) => {
    const api = window.comfyAPI.api.api;
    const r = await fetch(api.apiURL("/prompt"), { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt: output, client_id: api.clientId ?? api.initialClientId,
        extra_data: { extra_pnginfo: { workflow } } }) });
    return { status: r.status, body: await r.json() };
  }, { output, workflow });
  if (queued.status !== 200) return { status: "rejected", detail: queued.body };
  const id = queued.body.prompt_id, t0 = Date.now();
  while (Date.now() - t0 < job.timeout_s * 1000) {
    const entry = await page.evaluate(async (id) => {
      const r = await fetch(window.comfyAPI.api.api.apiURL(`/history/${id}`));
      return (await r.json())[id];
    }, id);
    const st = entry?.status?.status_str;
    if (st === "success" || st === "error") {
      const errors = (entry.status.messages || []).filter(([k]) => k === "execution_error").map(([, m]) =>
        `${m.node_type}: ${m.exception_type}: ${m.exception_message}`);
      const files = [];
      for (const out of Object.values(entry.outputs || {})) {
        for (const items of Object.values(out)) {
          for (const it of Array.isArray(items) ? items : []) if (it && it.filename) files.push(it);
        }
      }
      return { status: st, seconds: (Date.now() - t0) / 1000, errors, files, outputs: entry.outputs };
    }
    await sleep(500);
  }
  return { status: "timeout", seconds: (Date.now() - t0) / 1000 };
}

async function main() {
  const browser = await chromium.launch({ executablePath: job.chromium, headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
  const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  const consoleLines = [];
  page.on("console", (m) => {
    if (["warning", "error"].includes(m.type())) consoleLines.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => consoleLines.push(`pageerror: ${e.message}`));
  page.on("response", (r) => { if (r.status() >= 400) consoleLines.push(`http ${r.status()}: ${r.url()}`); });
  const result = { templates: [], console: consoleLines };
  try {
    await ready(page);
    result.frontend = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
    result.listed = await page.evaluate(async () =>
      (await fetch(window.comfyAPI.api.api.apiURL("/workflow_templates"))).json());
    if (job.browse && job.shots) { // the Templates menu as a user opens it, for the screenshot
      await page.getByText("Templates", { exact: true }).first().click(); // the sidebar button
      await sleep(2500);
      const custom = page.getByText(job.module, { exact: false }).first();
      if (await custom.count()) { await custom.click().catch(() => {}); await sleep(2000); }
      result.browse_text = await page.evaluate(() => document.body.innerText);
      await page.screenshot({ path: `${job.shots}/templates_menu.png` });
      await page.keyboard.press("Escape");
      await sleep(500);
    }
    for (const t of job.templates) {
      const r = { name: t.name, ...(t.label ? { label: t.label } : {}) };
      const url = `/api/workflow_templates/${encodeURIComponent(job.module)}/${encodeURIComponent(t.name)}`;
      const loaded = await page.evaluate(async ({ url, name, overrides }) => {
        const app = window.comfyAPI.app.app;
        const res = await fetch(url + ".json");
        if (!res.ok) return { http: res.status };
        const thumb = await fetch(url + ".jpg");
        const json = await res.json();
        await app.loadGraphData(json, true, true, name);
        for (const [type, values] of Object.entries(overrides || {})) { // widget values set as a user would
          for (const node of app.graph._nodes.filter((n) => n.type === type)) {
            for (const [k, v] of Object.entries(values)) {
              const w = node.widgets.find((w) => w.name === k);
              w.value = v;
              node.onWidgetChanged?.(k, v, undefined, w);
            }
          }
        }
        const unknown = app.graph._nodes.filter((n) => !window.LiteGraph.registered_node_types[n.type])
          .map((n) => n.type);
        const { output, workflow } = await app.graphToPrompt();
        const rationale = app.graph._nodes.filter((n) => n.type === "VIVA_Judge").map((n) => {
          const w = n.widgets.find((w) => w.name === "rationale");
          return { value: w.value, disabled: !!w.disabled };
        });
        return { http: res.status, thumb: thumb.status, thumb_type: thumb.headers.get("content-type"),
          nodes: app.graph._nodes.length, saved_nodes: json.nodes.length, unknown, output, workflow, rationale };
      }, { url, name: t.name, overrides: t.overrides });
      Object.assign(r, loaded);
      await sleep(300);
      r.overlaps_loaded = await overlaps(page);
      if (t.run && loaded.output) {
        const run = await runPrompt(page, loaded.output, loaded.workflow);
        Object.assign(r, { run });
        await sleep(1500); // the executed messages resize nodes (web/js/viva.js)
        r.overlaps_after = await overlaps(page);
        await fitView(page); // DOM widgets of nodes outside the view are hidden
        r.text_boxes = await page.evaluate(() => window.comfyAPI.app.app.graph._nodes.flatMap((n) =>
          (n.widgets || []).filter((w) => w.name === "viva_result" && w.element).map((w) => ({ node: n.title,
            lines: w.element.value.split("\n").length, scroll: [w.element.scrollWidth, w.element.scrollHeight],
            client: [w.element.clientWidth, w.element.clientHeight] }))));
      }
      delete r.workflow;
      if (job.shots) {
        await page.keyboard.press("Escape"); // an error dialog would hide the graph
        await fitView(page);
        await page.screenshot({ path: `${job.shots}/${t.label ?? t.name}.png` });
      }
      result.templates.push(r);
    }
  } catch (err) {
    result.error = String(err && err.stack || err);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
}

main();

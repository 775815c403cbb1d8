// The operator console: one page, routed by the URL's hash, reading and acting only through
// the service's admin API and its event stream. Text from the API is always set as text
// (never as HTML), and every request carries the console's CSRF header.
"use strict";

const STATUSES = ["PENDING", "STOCK_RESERVED", "PAID", "CONFIRMED", "REJECTED", "COMPENSATING", "REVERSED"];
const main = document.getElementById("main");
let session = null;
let teardown = [];

// ---- helpers -----------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

async function api(path, options = {}) {
  const init = {
    method: options.method || "GET",
    credentials: "same-origin",
    headers: { "Accept": "application/json", "X-Requested-By": "console" },
  };
  if (options.body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    window.location.assign("/console/login");
    throw new Error("signed out");
  }
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  return { ok: response.ok, status: response.status, body };
}

function problemText(result) {
  const body = result.body || {};
  return body.detail || body.title || ("HTTP " + result.status);
}

function toast(text, isError) {
  const node = document.getElementById("toast");
  node.textContent = text;
  node.className = "toast" + (isError ? " error" : "");
  node.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { node.hidden = true; }, 5000);
}

function when(at) {
  if (!at) return "";
  const d = new Date(at);
  return d.toISOString().replace("T", " ").slice(0, 23) + "Z";
}

function duration(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return Math.round(ms) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return (ms / 60000).toFixed(1) + " min";
}

function money(cents, currency) {
  return (cents / 100).toFixed(2) + " " + (currency || "");
}

function badge(status, extra) {
  return el("span", { class: "badge " + status + (extra ? " " + extra : "") }, status);
}

function orderLink(id) {
  return el("a", { href: "#/orders/" + id, class: "mono" }, id);
}

function heading(text) {
  return el("h1", { id: "page-title" }, text);
}

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

function every(ms, fn) {
  const timer = setInterval(fn, ms);
  teardown.push(() => clearInterval(timer));
}

// ---- the event stream ---------------------------------------------------------------------

const listeners = new Set();
const feed = [];
const TYPES = ["order.created", "order.stock_reserved", "order.paid", "order.confirmed", "order.rejected",
  "order.failed", "order.cancelled", "order.reversed", "order.parked", "order.resumed", "order.step"];

function connectEvents() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  source.onopen = () => { live.textContent = "● live"; live.classList.add("on"); };
  source.onerror = () => { live.textContent = "○ reconnecting"; live.classList.remove("on"); };
  for (const type of TYPES) {
    source.addEventListener(type, (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch (_) { return; }
      feed.unshift(event);
      feed.length = Math.min(feed.length, 30);
      for (const listener of listeners) listener(event);
    });
  }
}

function onEvent(listener) {
  listeners.add(listener);
  teardown.push(() => listeners.delete(listener));
}

// ---- pages --------------------------------------------------------------------------------

async function overviewPage() {
  main.replaceChildren(heading("Overview"), el("p", { class: "muted" }, "Loading…"));
  const cards = el("div", { class: "cards", id: "overview-cards" });
  const throughput = el("div", { class: "panel" }, el("h2", {}, "Sagas finished per second"));
  const latency = el("div", { class: "panel" }, el("h2", {}, "Saga duration (p50 / p99)"),
    el("div", { class: "legend" }, el("span", { class: "p50" }, "— p50"), el("span", { class: "p99" }, "— p99")));
  const recent = el("div", { class: "panel" }, el("h2", {}, "Latest events"));
  const feedList = el("ul", { class: "feed", id: "feed" });
  recent.append(feedList);
  const charts = el("div", { class: "panels" }, throughput, latency, recent);
  const note = el("p", { class: "muted small", id: "overview-note" });
  main.replaceChildren(heading("Overview"), cards, charts, note);

  const card = (label, value, key, tone) => el("div", { class: "card" + (tone ? " " + tone : ""), dataset: { key } },
    el("div", { class: "label" }, label), el("div", { class: "value", "data-value": key }, value));

  const render = (o) => {
    const counts = o.orders_by_status || {};
    const items = STATUSES.map((s) => card(s.replace("_", " ").toLowerCase(), counts[s] ?? "–", "status-" + s));
    items.push(card("parked", o.parked ?? "–", "parked", o.parked ? "bad" : ""));
    items.push(card("dead letters", o.dead_letters ?? "–", "dead_letters", o.dead_letters ? "bad" : ""));
    items.push(card("outbox backlog", o.outbox_backlog ?? "–", "outbox_backlog"));
    items.push(card("live actors", o.live_actors, "live_actors"));
    items.push(card("broker (" + o.broker.kind + ")", o.broker.connected ? "up" : "down", "broker", o.broker.connected ? "ok" : "bad"));
    items.push(card("database", o.database.ok ? "up" : "down", "database", o.database.ok ? "ok" : "bad"));
    cards.replaceChildren(...items);
    const points = o.throughput || [];
    throughput.replaceChildren(el("h2", {}, "Sagas finished per second"), barChart(points.map((p) => p.per_second), points));
    latency.replaceChildren(latency.firstChild, latency.children[1], lineChart(points));
    note.textContent = "Charts: the last " + (o.window_seconds / 60) + " minutes in " + o.bucket_seconds +
      " s steps, sagas finished by " + (o.replica ? "replica " + o.replica : "this service") + ". Updated " + when(new Date()) + ".";
  };
  const renderFeed = () => {
    feedList.replaceChildren(...feed.slice(0, 15).map((e) =>
      el("li", {}, el("span", { class: "muted" }, when(e.at).slice(11, 23) + " "), el("strong", {}, e.type), " ",
        el("a", { href: "#/orders/" + e.order_id, class: "mono" }, e.order_id.slice(0, 13) + "…"), " ", e.status)));
    if (!feed.length) feedList.replaceChildren(el("li", { class: "muted" }, "Waiting for events…"));
  };
  const load = async () => {
    const result = await api("/api/admin/overview");
    if (result.ok) render(result.body);
    else note.textContent = "Could not load the overview: " + problemText(result);
  };
  await load();
  renderFeed();
  const soon = debounce(load, 700);
  onEvent(() => { renderFeed(); soon(); });
  every(5000, load);
}

function barChart(values, points) {
  const width = 300, height = 110, max = Math.max(1, ...values);
  const svg = svgEl("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
    "aria-label": "Sagas finished per second, last value " + (values[values.length - 1] || 0).toFixed(1) });
  const w = width / Math.max(1, values.length);
  values.forEach((v, i) => {
    const h = (v / max) * height;
    const bar = svgEl("rect", { class: "bar", "vector-effect": "non-scaling-stroke", x: (i * w + 1).toFixed(1), y: (height - h).toFixed(1), width: Math.max(1, w - 2).toFixed(1), height: h.toFixed(1) });
    const title = svgEl("title", {});
    title.textContent = when(points[i].at).slice(11, 19) + ": " + v.toFixed(1) + "/s";
    bar.append(title);
    svg.append(bar);
  });
  svg.append(svgEl("line", { class: "axis", x1: 0, y1: height, x2: width, y2: height }));
  const last = values.length ? values[values.length - 1] : 0;
  return el("div", {}, el("div", { class: "chart-label" }, "now " + last.toFixed(1) + "/s · peak " + max.toFixed(1) + "/s"), svg);
}

function lineChart(points) {
  const width = 300, height = 110;
  const all = points.flatMap((p) => [p.p50_ms, p.p99_ms]).filter((v) => v !== null && v !== undefined);
  const max = Math.max(1, ...all);
  const svg = svgEl("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
    "aria-label": "Saga duration p50 and p99 in milliseconds" });
  const step = width / Math.max(1, points.length - 1);
  for (const key of ["p50_ms", "p99_ms"]) {
    let d = "";
    points.forEach((p, i) => {
      const v = p[key];
      if (v === null || v === undefined) return;
      d += (d ? " L" : "M") + (i * step).toFixed(1) + " " + (height - (v / max) * height).toFixed(1);
    });
    if (d) svg.append(svgEl("path", { class: key.slice(0, 3), d, "vector-effect": "non-scaling-stroke" }));
  }
  svg.append(svgEl("line", { class: "axis", x1: 0, y1: height, x2: width, y2: height }));
  const latest = [...points].reverse().find((p) => p.p50_ms !== null && p.p50_ms !== undefined);
  const text = latest ? "latest p50 " + duration(latest.p50_ms) + " · p99 " + duration(latest.p99_ms) + " · peak " + duration(max)
    : "no saga finished in the window";
  return el("div", {}, el("div", { class: "chart-label" }, text), svg);
}

async function ordersPage(query) {
  const params = new URLSearchParams(query);
  const form = el("form", { class: "filters", id: "order-filters" },
    el("label", {}, "Search (order id or Idempotency-Key)", el("input", { name: "q", id: "filter-q", value: params.get("q") || "", size: 30 })),
    el("label", {}, "Status", el("select", { name: "status", id: "filter-status" },
      el("option", { value: "" }, "any"), ...STATUSES.map((s) => el("option", { value: s, selected: params.get("status") === s }, s)))),
    el("label", {}, "Customer", el("input", { name: "customer", id: "filter-customer", value: params.get("customer") || "", size: 12 })),
    el("label", {}, "Created from", el("input", { type: "datetime-local", name: "from", value: params.get("from") || "" })),
    el("label", {}, "to", el("input", { type: "datetime-local", name: "to", value: params.get("to") || "" })),
    el("button", { type: "submit" }, "Filter"),
    el("button", { type: "button", class: "secondary", onclick: () => { location.hash = "#/orders"; } }, "Clear"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) next.set(k, v);
    location.hash = "#/orders" + (next.toString() ? "?" + next : "");
  });
  const table = el("div", { class: "table-wrap" });
  const more = el("div", { class: "actions" });
  main.replaceChildren(heading("Orders"), form, table, more);
  const api_params = new URLSearchParams();
  for (const key of ["q", "status", "customer"]) if (params.get(key)) api_params.set(key, params.get(key));
  for (const key of ["from", "to"]) if (params.get(key)) api_params.set(key, new Date(params.get(key)).toISOString());
  api_params.set("limit", "50");
  const rows = [];
  const load = async (before) => {
    const p = new URLSearchParams(api_params);
    if (before) p.set("before", before);
    const result = await api("/api/admin/orders?" + p);
    if (!result.ok) { table.replaceChildren(el("p", { class: "alert error" }, problemText(result))); return; }
    rows.push(...result.body.orders);
    table.replaceChildren(ordersTable(rows, "Orders, newest first"));
    more.replaceChildren(result.body.next
      ? el("button", { class: "secondary", id: "next-page", onclick: () => load(result.body.next) }, "Older orders")
      : el("span", { class: "muted small" }, rows.length + " order(s); no more."));
  };
  await load(null);
}

function ordersTable(orders, caption) {
  if (!orders.length) return el("p", { class: "muted pad" }, "No orders.");
  return el("table", { id: "orders-table" }, el("caption", { class: "muted small" }, caption),
    el("thead", {}, el("tr", {}, el("th", {}, "Order"), el("th", {}, "Status"), el("th", { class: "hide-narrow" }, "Customer"),
      el("th", { class: "num" }, "Total"), el("th", { class: "hide-narrow" }, "Created"), el("th", {}, "Note"))),
    el("tbody", {}, ...orders.map((o) => el("tr", { dataset: { orderId: o.id } },
      el("td", {}, orderLink(o.id)), el("td", {}, badge(o.status), o.parked_reason ? [" ", badge("parked", "parked")] : null),
      el("td", { class: "hide-narrow" }, o.customer_id), el("td", { class: "num" }, money(o.total_cents, o.currency)),
      el("td", { class: "hide-narrow" }, when(o.created_at)), el("td", { class: "small" }, o.parked_reason || o.failure_reason || "")))));
}

async function orderPage(id) {
  main.replaceChildren(heading("Order"), el("p", { class: "muted" }, "Loading…"));
  const render = async () => {
    const result = await api("/api/admin/orders/" + encodeURIComponent(id));
    if (!result.ok) {
      main.replaceChildren(heading("Order"), el("p", { class: "alert error" }, problemText(result)));
      return;
    }
    const { order, timeline, actions, payment_mode } = result.body;
    const status = el("span", { id: "order-status" }, badge(order.status));
    const facts = el("dl", { class: "facts" },
      el("dt", {}, "Order"), el("dd", { class: "mono" }, order.id),
      el("dt", {}, "Status"), el("dd", {}, status, order.parked_reason ? [" ", badge("parked", "parked")] : null),
      el("dt", {}, "Customer"), el("dd", {}, order.customer_id),
      el("dt", {}, "Total"), el("dd", {}, money(order.total_cents, order.currency), " · ",
        order.items.map((i) => i.quantity + " × " + i.sku).join(", ")),
      el("dt", {}, "Payment mode"), el("dd", {}, payment_mode),
      el("dt", {}, "Created"), el("dd", {}, when(order.created_at)),
      el("dt", {}, "Steps"), el("dd", { class: "steps", id: "order-steps" },
        el("span", {}, "reservation ", badge(order.steps.reservation)),
        el("span", {}, "payment ", badge(order.steps.payment)),
        el("span", {}, "shipment ", badge(order.steps.shipment))),
      order.failure_reason ? [el("dt", {}, "Failure"), el("dd", { id: "failure-reason" }, order.failure_reason)] : null,
      order.parked_reason ? [el("dt", {}, "Parked"), el("dd", { id: "parked-reason" }, order.parked_reason)] : null);
    const message = el("div", { id: "action-message" });
    const buttons = el("div", { class: "actions" });
    const cancelForm = el("form", { class: "actions", id: "cancel-form", hidden: true },
      el("label", { for: "cancel-reason" }, "Reason "),
      el("input", { id: "cancel-reason", name: "reason", maxlength: 500, placeholder: "why it is cancelled", size: 30 }),
      el("button", { type: "submit", class: "danger", id: "cancel-confirm" }, "Cancel and compensate"),
      el("button", { type: "button", class: "secondary", onclick: () => { cancelForm.hidden = true; } }, "Keep it"));
    cancelForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const reason = document.getElementById("cancel-reason").value || "cancelled from the console";
      const done = await api("/api/orders/" + order.id + "/status", { method: "PATCH", body: { status: "REVERSED", reason } });
      message.replaceChildren(el("p", { class: "alert" + (done.ok ? " ok" : " error") }, done.ok ? "Cancelled: compensating." : problemText(done)));
      if (done.ok) render();
    });
    if (actions.cancel) buttons.append(el("button", { class: "danger", id: "action-cancel", onclick: () => { cancelForm.hidden = false; document.getElementById("cancel-reason").focus(); } }, "Cancel order…"));
    if (actions.pay) buttons.append(el("button", { id: "action-pay", onclick: async () => {
      const done = await api("/api/orders/" + order.id + "/pay", { method: "POST", body: {} });
      message.replaceChildren(el("p", { class: "alert" + (done.ok ? " ok" : " error") }, done.ok ? "Payment submitted." : problemText(done)));
      if (done.ok) render();
    } }, "Submit payment (dev)"));
    if (actions.resume) buttons.append(resumeButton(order.id, () => render(), message));
    if (!buttons.children.length) buttons.append(el("span", { class: "muted small" }, "No action is open in this state."));
    const steps = el("ol", { class: "timeline", id: "timeline" }, ...timeline.map((t) => el("li", { dataset: { status: t.status, event: t.event } },
      el("div", { class: "when" }, when(t.at), t.spent_ms ? " · after " + duration(t.spent_ms) : ""),
      el("div", { class: "what" }, t.from ? t.from + " → " : "", t.status, " ", el("span", { class: "muted" }, "(" + t.event + ")")),
      el("div", {}, t.reason),
      t.received ? el("div", {}, el("span", { class: "muted small" }, "received "), el("span", { class: "chip rpl" }, t.received)) : null,
      t.commands.length ? el("div", {}, el("span", { class: "muted small" }, "sent "), ...t.commands.map((c) => el("span", { class: "chip cmd" }, c))) : null,
      t.published.length ? el("div", {}, el("span", { class: "muted small" }, "published "), ...t.published.map((c) => el("span", { class: "chip evt" }, c))) : null,
      t.steps ? el("div", { class: "small muted" }, "reservation " + t.steps.reservation + " · payment " + t.steps.payment + " · shipment " + t.steps.shipment) : null)));
    main.replaceChildren(heading("Order"), el("div", { class: "panel" }, facts), buttons, cancelForm, message,
      el("h2", {}, "Saga timeline"), steps);
  };
  await render();
  const soon = debounce(render, 300);
  onEvent((e) => { if (e.order_id === id) soon(); });
}

function resumeButton(id, after, message) {
  return el("button", { class: "action-resume", dataset: { orderId: id }, onclick: async (e) => {
    e.target.disabled = true;
    const done = await api("/api/admin/orders/" + id + "/resume", { method: "POST", body: { reason: "resumed from the console" } });
    const text = done.ok ? "Resumed: its pending commands were sent again." : problemText(done);
    if (message) message.replaceChildren(el("p", { class: "alert" + (done.ok ? " ok" : " error") }, text));
    else toast(text, !done.ok);
    after();
  } }, "Resume");
}

async function parkedPage() {
  const list = el("div", { id: "parked-list" });
  main.replaceChildren(heading("Parked orders"),
    el("p", { class: "muted" }, "Orders whose actor kept failing. Fix the cause, then resume: the saga goes on from where it stopped."), list);
  const load = async () => {
    const result = await api("/api/admin/orders?parked=true&limit=200");
    if (!result.ok) { list.replaceChildren(el("p", { class: "alert error" }, problemText(result))); return; }
    const orders = result.body.orders;
    if (!orders.length) { list.replaceChildren(el("p", { class: "alert ok", id: "no-parked" }, "No order is parked.")); return; }
    list.replaceChildren(el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "Order"), el("th", {}, "Status"), el("th", {}, "Why"), el("th", {}, ""))),
      el("tbody", {}, ...orders.map((o) => el("tr", { dataset: { orderId: o.id } },
        el("td", {}, orderLink(o.id)), el("td", {}, badge(o.status)), el("td", { class: "small" }, o.parked_reason),
        el("td", {}, resumeButton(o.id, load, null))))))));
  };
  await load();
  onEvent((e) => { if (e.type === "order.parked" || e.type === "order.resumed") load(); });
}

async function deadLettersPage() {
  const list = el("div", { id: "dead-letter-list" });
  const summary = el("p", { class: "muted", id: "dead-letter-total" });
  const settle = async (path, method, verb) => {
    const done = await api(path, { method });
    toast(done.ok ? verb + ": " + (done.body.replayed ?? done.body.discarded) : problemText(done), !done.ok);
    load();
  };
  const top = el("div", { class: "actions" },
    el("button", { id: "replay-all", onclick: () => settle("/api/admin/dead-letters/replay", "POST", "Replayed") }, "Replay all"),
    el("button", { id: "discard-all", class: "danger", onclick: () => {
      if (window.confirm("Discard every dead letter? They cannot be brought back.")) settle("/api/admin/dead-letters", "DELETE", "Discarded");
    } }, "Discard all"),
    el("button", { class: "secondary", onclick: () => load() }, "Refresh"));
  main.replaceChildren(heading("Dead letters"),
    el("p", { class: "muted" }, "Messages a consumer could not handle, kept in order.dead-letters. Replay sends one back to the queue it came from, through the same idempotent consumer."),
    top, summary, list);
  const load = async () => {
    const result = await api("/api/admin/dead-letters?limit=100");
    if (!result.ok) { list.replaceChildren(el("p", { class: "alert error" }, problemText(result))); return; }
    const { dead_letters, total } = result.body;
    summary.textContent = total + " in the queue" + (total > dead_letters.length ? ", the first " + dead_letters.length + " shown" : "");
    list.replaceChildren(...dead_letters.map((d) => el("div", { class: "panel dead-letter", dataset: { id: d.id } },
      el("dl", { class: "facts" },
        el("dt", {}, "From queue"), el("dd", { class: "mono" }, d.queue || "–"),
        el("dt", {}, "Routing key"), el("dd", { class: "mono" }, d.routing_key),
        el("dt", {}, "Reason"), el("dd", {}, d.reason || "–"),
        el("dt", {}, "Type"), el("dd", { class: "mono" }, d.type || "–"),
        el("dt", {}, "Message id"), el("dd", { class: "mono" }, d.message_id || "–")),
      el("details", {}, el("summary", {}, "Headers (" + Object.keys(d.headers).length + ")"),
        el("pre", { class: "body" }, Object.entries(d.headers).map(([k, v]) => k + ": " + v).join("\n"))),
      el("pre", { class: "body" }, d.body + (d.body_bytes > d.body.length ? "\n… (" + d.body_bytes + " bytes)" : "")),
      el("div", { class: "actions" },
        el("button", { class: "action-replay", dataset: { id: d.id }, onclick: () => settle("/api/admin/dead-letters/" + d.id + "/replay", "POST", "Replayed") }, "Replay"),
        el("button", { class: "action-discard secondary", dataset: { id: d.id }, onclick: () => {
          if (window.confirm("Discard this dead letter?")) settle("/api/admin/dead-letters/" + d.id, "DELETE", "Discarded");
        } }, "Discard")))));
    if (!dead_letters.length) list.replaceChildren(el("p", { class: "alert ok" }, "The dead-letter queue is empty."));
  };
  await load();
}

async function inventoryPage() {
  const table = el("div", { class: "table-wrap", id: "inventory" });
  const message = el("div", {});
  main.replaceChildren(heading("Inventory"), el("p", { class: "muted" }, "Stock per SKU. Add or remove available units (a delivery, breakage); reserved and sold units change with the sagas."), message, table);
  const load = async () => {
    const result = await api("/api/inventory");
    if (!result.ok) { table.replaceChildren(el("p", { class: "alert error" }, problemText(result))); return; }
    table.replaceChildren(el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "SKU"), el("th", { class: "hide-narrow" }, "Name"), el("th", { class: "num" }, "Price"),
        el("th", { class: "num" }, "Available"), el("th", { class: "num" }, "Reserved"), el("th", { class: "num" }, "Sold"), el("th", {}, "Add / remove"))),
      el("tbody", {}, ...result.body.items.map((item) => {
        const input = el("input", { type: "number", step: 1, size: 6, "aria-label": "Units to add to " + item.sku, class: "adjust" });
        const form = el("form", { class: "actions tight" }, input, el("button", { type: "submit", class: "secondary" }, "Apply"));
        form.addEventListener("submit", async (e) => {
          e.preventDefault();
          const adjust = parseInt(input.value, 10);
          if (!Number.isFinite(adjust) || adjust === 0) return;
          const done = await api("/api/inventory/" + encodeURIComponent(item.sku), { method: "PATCH", body: { adjust } });
          message.replaceChildren(el("p", { class: "alert" + (done.ok ? " ok" : " error") }, done.ok ? item.sku + ": " + done.body.available + " available" : problemText(done)));
          load();
        });
        return el("tr", { dataset: { sku: item.sku } }, el("td", { class: "mono" }, item.sku), el("td", { class: "hide-narrow" }, item.name),
          el("td", { class: "num" }, money(item.price_cents, "")), el("td", { class: "num" }, item.available),
          el("td", { class: "num" }, item.reserved), el("td", { class: "num" }, item.sold), el("td", {}, form));
      }))));
  };
  await load();
}

async function invariantsPage() {
  const out = el("div", { id: "invariants" });
  const run = async () => {
    out.replaceChildren(el("p", { class: "muted" }, "Checking every order…"));
    const result = await api("/api/admin/invariants");
    if (!result.ok) { out.replaceChildren(el("p", { class: "alert error" }, problemText(result))); return; }
    const r = result.body;
    out.replaceChildren(
      el("p", { class: "alert " + (r.holds ? "ok" : "error"), id: "invariants-verdict" }, r.holds ? "Every invariant holds." : "Not holding: see below."),
      el("dl", { class: "facts" },
        el("dt", {}, "In flight"), el("dd", {}, r.in_flight),
        el("dt", {}, "Parked"), el("dd", {}, r.parked),
        ...Object.entries(r.orders_by_status).flatMap(([s, n]) => [el("dt", {}, s), el("dd", {}, n)])),
      r.violations.length ? [el("h2", {}, "Violations"), el("ul", {}, ...r.violations.map((v) => el("li", {}, v)))] : null);
  };
  main.replaceChildren(heading("Invariants"),
    el("p", { class: "muted" }, "Stock conserved per SKU, every confirmed order paid and shipped, every reversed or rejected order holding nothing. Meaningful when the system is quiet; reads every order."),
    el("div", { class: "actions" }, el("button", { id: "run-invariants", onclick: run }, "Run the check")), out);
}

// ---- routing ------------------------------------------------------------------------------

async function route() {
  for (const stop of teardown) stop();
  teardown = [];
  const hash = location.hash.replace(/^#/, "") || "/overview";
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  const page = parts[0] || "overview";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    if (page === "orders" && parts[1]) await orderPage(decodeURIComponent(parts[1]));
    else if (page === "orders") await ordersPage(query || "");
    else if (page === "parked") await parkedPage();
    else if (page === "dead-letters") await deadLettersPage();
    else if (page === "inventory") await inventoryPage();
    else if (page === "invariants") await invariantsPage();
    else await overviewPage();
    document.title = (document.getElementById("page-title")?.textContent || "Console") + " · Order console";
  } catch (error) {
    if (error.message !== "signed out") main.replaceChildren(el("p", { class: "alert error" }, "Something went wrong: " + error.message));
  }
  main.focus({ preventScroll: true });
}

(async function start() {
  const result = await api("/api/admin/session");
  if (result.ok) {
    session = result.body;
    document.getElementById("who").textContent = [session.replica && "replica " + session.replica,
      "payments " + session.payment_mode, session.broker].filter(Boolean).join(" · ");
  }
  connectEvents();
  window.addEventListener("hashchange", route);
  route();
})();

// The dashboard page: a snapshot, then section deltas over server-sent events; DOM built with
// textContent only (the records' strings are never parsed as HTML).
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const kid of kids) node.append(kid instanceof Node ? kid : String(kid));
  return node;
}

function num(v, digits = 2) {
  if (v === null || v === undefined) return "-";
  if (typeof v !== "number") return String(v);
  return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function signed(v) {
  const cls = v === null || v === undefined ? "" : v >= 0 ? "num up" : "num down";
  return el("td", { class: cls || "num" }, num(v));
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString("en-US", { hour12: false, timeZone: "America/New_York" }) + " ET" : "-";
}

function table(cols, rows, empty = "none") {
  if (!rows.length) return el("div", { class: "empty" }, empty);
  const t = el("table", {}, el("tr", {}, ...cols.map((c) => el("th", {}, c))));
  for (const r of rows) t.append(el("tr", {}, ...r.map((c) => (c instanceof Node ? c : el("td", {}, c)))));
  return t;
}

function chart(c) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 300 80");
  svg.setAttribute("preserveAspectRatio", "none");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", c.path || "");
  svg.append(path);
  return svg;
}

const render = {
  accounts(list) {
    const box = el("div", { class: "cards" });
    for (const a of list) {
      const c = a.chart;
      const change = c.first === null ? null : c.last - c.first;
      box.append(el("div", { class: "card", "data-account": a.account },
        el("h3", {}, a.account),
        el("div", { class: "money" },
          el("div", {}, el("span", {}, "equity"), num(a.equity)),
          el("div", {}, el("span", {}, "cash"), num(a.cash)),
          el("div", {}, el("span", {}, "buying power"), num(a.buying_power)),
          el("div", {}, el("span", {}, "today"), el("b", { class: change === null ? "" : change >= 0 ? "up" : "down" }, num(change))),
          el("div", {}, el("span", {}, "from"), `${a.source} ${time(a.as_of)}`)),
        chart(c),
        el("div", { class: "dim" }, c.min === null ? "no equity points today" : `today: low ${num(c.min)}, high ${num(c.max)}`),
        table(["symbol", "qty", "avg price", "market value", "unrealized P&L"],
          a.positions.map((p) => [p.symbol, el("td", { class: "num" }, num(p.qty, 0)), el("td", { class: "num" }, num(p.avg_price)),
            el("td", { class: "num" }, num(p.market_value)), signed(p.unrealized_pl)]), "no open positions")));
    }
    return list.length ? box : el("div", { class: "empty" }, "no accounts");
  },
  decisions(list) {
    const box = el("div");
    for (const d of list) {
      const head = el("div", { class: "head" },
        el("b", {}, d.account), ": ", el("span", { class: `status-${d.status}` }, d.status),
        ` (${d.intent}, ${d.mode}) ${d.action} ${d.symbol} qty ${num(d.qty, 0)} @ ${num(d.price)}; decided ${time(d.decided_at)}`,
        d.broker_order_id ? `; order ${d.broker_order_id}` : "");
      const gates = table(["gate", "passed", "value", "limit", "reason"],
        d.gates.map((g) => [g.name, el("td", { class: g.passed ? "up" : "down" }, g.passed ? "yes" : "no"),
          num(g.value, 4), num(g.limit, 4), g.reason]));
      box.append(el("div", { class: "decision", "data-key": d.key }, head, gates,
        d.failure_reason ? el("div", { class: "down" }, `failed gate: ${d.failure_reason}`) : ""));
    }
    return list.length ? box : el("div", { class: "empty" }, "no decisions yet");
  },
  skips(list) {
    return table(["account", "reason (first failing gate)", "count"],
      list.map((s) => [s.account, s.reason, el("td", { class: "num" }, s.count)]), "no skips today");
  },
  alerts(list) {
    if (!list.length) return el("div", { class: "empty" }, "nothing firing");
    return el("div", {}, ...list.map((a) => el("div", { class: `alert ${a.severity}` },
      el("b", {}, `${a.rule} ${a.subject}`), ` (${a.severity}, since ${time(a.started_at)}): ${a.summary}`)));
  },
  stages(s) {
    const box = el("div");
    box.append(el("div", {}, s.as_of ? `status at ${time(s.as_of)}: ${s.healthy ? "healthy" : "unhealthy"}` +
      (s.market_open === null || s.market_open === undefined ? "" : s.market_open ? ", market open" : ", market closed") : "status: waiting"));
    if (s.error) box.append(el("div", { class: "problem" }, s.error));
    for (const p of s.problems) box.append(el("div", { class: "problem" }, p));
    box.append(table(["consumer group", "lag", "partitions behind", "oldest wait"],
      s.groups.map((g) => [g.group, el("td", { class: "num" }, g.lag), el("td", { class: "num" }, g.partitions_behind),
        el("td", { class: "num" }, g.oldest_wait_s === null ? "-" : `${Math.round(g.oldest_wait_s)}s`)]),
      "no consumer group has committed yet"));
    box.append(table(["stage", "last closed minute", "at"],
      s.progress.map((p) => [p.stage, time(p.minute), time(p.at)]), "no stage has closed a minute yet"));
    box.append(table(["symbol", "last bar", "age", "missing minutes"],
      s.symbols.map((x) => [x.symbol, time(x.last_bar), x.age_s === null ? "-" : `${Math.round(x.age_s)}s`, x.missing_minutes])));
    return box;
  },
};

function show(sections) {
  for (const [name, data] of Object.entries(sections)) {
    if (name === "day") { document.getElementById("day").textContent = data; continue; }
    const box = document.getElementById(name);
    if (box && render[name]) box.replaceChildren(render[name](data));
  }
}

function connect() {
  const conn = document.getElementById("conn");
  const source = new EventSource("/events");
  source.addEventListener("snapshot", (e) => { show(JSON.parse(e.data)); conn.textContent = "live"; conn.className = "conn live"; });
  source.addEventListener("delta", (e) => show(JSON.parse(e.data)));
  source.onerror = () => { conn.textContent = "reconnecting"; conn.className = "conn"; };
}

document.addEventListener("DOMContentLoaded", connect);

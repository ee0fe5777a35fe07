"""The CSS and JavaScript inlined into report.html (the page must open offline, from one file).

The script only ever puts text into the page through ``textContent`` (model output is
untrusted and may hold markup), reads its data from the JSON in
``<script type="application/json" id="report-data">`` and builds the trajectory
browser: a generation filter and a search box over the question list; a click shows
every step of that rollout with its K samples (perplexity, tokens, ranker score;
the one the rollout kept and the one the ranker chose marked), the snippets, and the
final answer beside the gold answers.
"""

CSS = """
:root { --fg: #1d232a; --muted: #5b6670; --line: #d6dbe0; --bg: #ffffff; --soft: #f4f6f8; --ok: #1a7f37;
        --bad: #b42318; --kept: #0b6bcb; --rank: #a15c00; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); }
header { padding: 18px 28px 10px; border-bottom: 1px solid var(--line); background: var(--soft); }
header h1 { margin: 0 0 4px; font-size: 22px; }
.meta { color: var(--muted); margin: 2px 0; font-size: 14px; }
nav a { margin-right: 14px; font-size: 14px; color: var(--kept); text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1320px; }
.verdict { margin: 14px 0 0; padding: 8px 12px; border-left: 4px solid var(--muted); background: var(--soft);
           font-weight: 600; }
.verdict.met { border-color: var(--ok); }
.verdict.not-met { border-color: var(--bad); }
section { margin-top: 26px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: right; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.text, th.text { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
.pair { display: flex; flex-wrap: wrap; gap: 36px; align-items: flex-start; }
.pair > div { flex: 0 1 auto; max-width: 540px; }
.note, .empty { color: var(--muted); font-size: 13px; }
.paper td { color: var(--muted); }
img.plot { max-width: 100%; border: 1px solid var(--line); margin: 6px 0; }
.browser { display: grid; grid-template-columns: minmax(260px, 34%) 1fr; gap: 16px; }
.controls { display: flex; gap: 8px; margin-bottom: 8px; }
.controls input { flex: 1; padding: 6px 8px; font-size: 14px; border: 1px solid var(--line); border-radius: 4px; }
.controls select { padding: 5px; font-size: 14px; }
#q-list { list-style: none; margin: 0; padding: 0; max-height: 640px; overflow-y: auto;
          border: 1px solid var(--line); border-radius: 4px; }
#q-list li { padding: 6px 9px; border-bottom: 1px solid var(--line); cursor: pointer; font-size: 14px; }
#q-list li:hover { background: var(--soft); }
#q-list li.active { background: #e4efff; }
.badge { display: inline-block; min-width: 18px; padding: 0 5px; margin-right: 6px; border-radius: 3px;
         font-size: 12px; color: #fff; text-align: center; }
.badge.ok { background: var(--ok); } .badge.bad { background: var(--bad); } .badge.unk { background: var(--muted); }
.badge.kept { background: var(--kept); } .badge.rank { background: var(--rank); }
#q-detail { border: 1px solid var(--line); border-radius: 4px; padding: 10px 14px; min-height: 200px; }
.answers { display: grid; grid-template-columns: max-content 1fr; gap: 3px 12px; margin: 8px 0 12px; }
.answers dt { color: var(--muted); } .answers dd { margin: 0; }
.step { border-left: 4px solid var(--line); padding: 4px 10px; margin: 10px 0; }
.step h4 { margin: 0 0 4px; font-size: 14px; }
.step.search { border-color: #7fb77e; } .step.final { border-color: var(--ok); }
.sample-text { white-space: pre-wrap; word-break: break-word; font-family: ui-monospace, Menlo, monospace;
               font-size: 13px; text-align: left; }
tr.unparsed .sample-text { color: var(--muted); text-decoration: line-through; }
.snippet { font-size: 13px; margin: 3px 0; } .snippet b { font-weight: 600; }
.err { color: var(--bad); font-size: 13px; }
"""

JS = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var trajs = data.trajectories;
  var list = document.getElementById("q-list"), box = document.getElementById("q-search");
  var genSel = document.getElementById("q-gen"), detail = document.getElementById("q-detail");
  var count = document.getElementById("q-count");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function badge(t) {
    if (t.correct === true) return el("span", "badge ok", "\\u2713");
    if (t.correct === false) return el("span", "badge bad", "\\u2717");
    return el("span", "badge unk", "?");
  }
  function cell(tr, text, cls) { var td = el("td", cls, text); tr.appendChild(td); return td; }

  var gens = [];
  trajs.forEach(function (t) { if (gens.indexOf(t.gen) < 0) gens.push(t.gen); });
  genSel.appendChild(el("option", null, "all generations")).value = "";
  gens.forEach(function (g) { genSel.appendChild(el("option", null, "gen " + g)).value = String(g); });

  function matches(t, q, g) {
    if (g !== "" && String(t.gen) !== g) return false;
    if (!q) return true;
    return [t.question, t.id, t.answer || "", t.golds.join(" ")].join(" ").toLowerCase().indexOf(q) >= 0;
  }
  function renderList() {
    var q = box.value.trim().toLowerCase(), g = genSel.value, shown = 0;
    list.replaceChildren();
    trajs.forEach(function (t, i) {
      if (!matches(t, q, g)) return;
      shown += 1;
      var li = el("li");
      li.dataset.index = String(i);
      li.appendChild(badge(t));
      li.appendChild(el("span", null, "gen " + t.gen + " \\u00b7 " + t.question));
      li.addEventListener("click", function () { show(i); });
      list.appendChild(li);
    });
    count.textContent = shown + " of " + trajs.length + " rollouts";
  }
  function sampleTable(step) {
    var table = el("table"), head = el("tr");
    ["#", "sample", "perplexity", "tokens", "score", ""].forEach(function (h, j) {
      head.appendChild(el("th", j === 1 ? "text" : null, h));
    });
    table.appendChild(el("thead")).appendChild(head);
    var body = table.appendChild(el("tbody"));
    step.samples.forEach(function (s, j) {
      var tr = el("tr", s.parsed ? null : "unparsed");
      cell(tr, j);
      cell(tr, s.text, "sample-text");
      cell(tr, s.ppl);
      cell(tr, s.tokens);
      cell(tr, s.score === null ? "\\u2014" : s.score);
      var marks = cell(tr, null, "text");
      if (step.kept === j) marks.appendChild(el("span", "badge kept", "kept"));
      if (step.ranker === j) marks.appendChild(el("span", "badge rank", "ranker"));
      if (!s.parsed) marks.appendChild(el("span", "note", "did not parse"));
      body.appendChild(tr);
    });
    return table;
  }
  function show(i) {
    var t = trajs[i];
    Array.prototype.forEach.call(list.children, function (li) {
      li.classList.toggle("active", li.dataset.index === String(i));
    });
    detail.replaceChildren();
    detail.appendChild(el("h3", null, t.question));
    var dl = detail.appendChild(el("dl", "answers"));
    function row(k, v) { dl.appendChild(el("dt", null, k)); return dl.appendChild(el("dd", null, v)); }
    row("final answer", t.answer === null ? "(no answer)" : t.answer).prepend(badge(t));
    row("gold", t.golds.length ? t.golds.join(" | ") : "(not available)");
    row("ended", t.end_reason + " \\u00b7 " + t.searches + " searches \\u00b7 gen " + t.gen + " \\u00b7 " + t.id);
    t.steps.forEach(function (s, k) {
      var div = detail.appendChild(el("div", "step " + s.kind));
      div.appendChild(el("h4", null, (k + 1) + ". " + s.kind));
      if (s.query !== null) div.appendChild(el("div", null, "query: " + s.query));
      s.snippets.forEach(function (sn) {
        var p = div.appendChild(el("div", "snippet"));
        p.appendChild(el("b", null, "[" + sn.link_id + "] " + sn.title + ": "));
        p.appendChild(document.createTextNode(sn.text));
      });
      if (s.samples.length) div.appendChild(sampleTable(s));
      if (s.output !== null && s.kind !== "search") div.appendChild(el("div", null, "output: " + s.output));
      if (s.error) div.appendChild(el("div", "err", s.error));
    });
  }
  box.addEventListener("input", renderList);
  genSel.addEventListener("change", renderList);
  renderList();
  // open on an answered rollout if there is one, else on the longest
  var first = trajs.findIndex(function (t) { return t.answer !== null; });
  if (first < 0) trajs.forEach(function (t, i) { if (first < 0 || t.steps.length > trajs[first].steps.length) first = i; });
  if (trajs.length) show(first); else detail.appendChild(el("p", "empty", "No ranked rollouts in this run yet."));
})();
"""

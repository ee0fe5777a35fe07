"""The run report on CPU: a run dir made by the real writers (RunState, GrowingBatch, write_jsonl,
write_result), then report.json, plots and report.html checked value by value.

The rollouts are built by hand (the ranker's scores included) so every statistic has
a known answer; one snippet carries ``</script>`` markup to prove the page escapes
model text.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from agent.trajectory import Question, Step, Trajectory
from core.config import AgentConfig, Config, ModelsConfig, RestConfig
from core.engine import Sample
from core.io import write_jsonl
from core.run_dir import RunDir
from core.search import Snippet
from core.state import RunState
from evals.qa import JUDGE_DETERMINISTIC, score_trajectories, write_result
from evals.report import ReportError, collect, write_report
from evals.report_html import json_island, table
from rest.batch import GrowingBatch, step_records
from rest.cli import main
from rest.runs import config_yaml

EVIL = "Mara Quill founded Brightwater Press </script><script>alert(1)</script> & more"
TRAIN = [Question("q1", "Who founded Brightwater Press?", ("Mara Quill",)),
         Question("q2", "Where was Tomas Wren born?", ("Kellmouth",))]
TEST = [Question("t1", "Which river flows through Olvenport?", ("Dask",)),
        Question("t2", "Who wrote The Salt Orchard?", ("Tomas Wren",))]


def _step(kind, texts, ok, chosen, scores, best, nll=(0.5, 1.5), error=None):
    samples = [Sample(t, 4, -nll[i % len(nll)] * 4) for i, t in enumerate(texts)]
    return Step(kind, prompt=f"<{kind} prompt>", samples=samples, parse_ok=list(ok), chosen=chosen,
                scores=list(scores), ranker_best=best, output=None if chosen is None else texts[chosen], error=error)


def rollouts() -> list[Trajectory]:
    a = Trajectory("q1#0", "q1", TRAIN[0].question, steps=[
        _step("decision", ['Search("Brightwater Press")', 'Search("founder")'], [1, 1], 0, [1.0, 2.0], 1),
        Step("search", query="Brightwater Press", snippets=[Snippet(1, "p1", "Mara Quill", EVIL)]),
        _step("summarize", ['"Mara Quill founded it [link_id=1]"'] * 2, [1, 1], 0, [1.0, 1.0], 0, nll=(0.5,)),
        _step("decision", ["Terminate()", 'Search("x")'], [1, 1], 0, [2.0, 1.0], 0),
        _step("answer", ['"Mara Quill [link_id=1]"', "garbage"], [1, 0], 0, [1.0, -10.0], 0),
        Step("final", output="Mara Quill"),
    ], answer="Mara Quill", end_reason="answered", searches_used=1)
    b = Trajectory("q2#0", "q2", TRAIN[1].question, steps=[
        _step("decision", ["Keep()", "Keep()"], [0, 0], None, [-10.0, -10.0], None, error="sample 0: bad"),
    ], end_reason="unparseable:decision: sample 0: bad")
    return [a, b]


def make_run(root: Path, *, generations_done: int = 1, ranker: str = "critic") -> RunDir:
    """A run dir as the driver leaves it after ``generations_done`` generations (0: the warm start only)."""
    run = RunDir(root)
    data = root.parent / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, qs in (("train.jsonl", TRAIN), ("test-questions.jsonl", TEST)):
        write_jsonl(data / name, [{"id": q.id, "question": q.question, "answers": list(q.answers)} for q in qs])
    cfg = Config(agent=AgentConfig(k_samples=2, search_budget=3),
                 models=ModelsConfig(policy="/m/L-warm", students={"S": "/m/S-base", "XS": "/m/XS-base"}),
                 rest=RestConfig(generations=2, train_dataset=str(data / "train.jsonl"),
                                 eval_datasets=[str(data / "test-questions.jsonl")]))
    cfg.ranker.kind = ranker
    cfg.ranker.min_score = {"critic": 2.0}
    run.root.mkdir(parents=True)
    run.config.write_text(config_yaml(cfg))
    state = RunState.load(run.state)

    def evaluate(gen: int) -> None:
        for i, model in enumerate(("L", "S", "XS")):
            answers = ["Dask", "Tomas Wren"][: max(0, gen + 2 - i)] + [None] * 2  # L knows most, later gens more
            trajs = [Trajectory(f"{q.id}#0", q.id, q.question, answer=a, end_reason="answered" if a else "unparseable:answer")
                     for q, a in zip(TEST, answers, strict=False)]
            result = score_trajectories(TEST, trajs, dataset="test-questions", model=model, judge=JUDGE_DETERMINISTIC,
                                        search={"label": "bm25 corpus.jsonl.gz"}, agent=cfg.agent, runner_stats={},
                                        seconds=2.0)
            write_result(result, run.eval_dir(gen, model, "test-questions"))

    evaluate(0)
    state.mark(0, "eval", {"seconds": 4.0})
    state.mark(0, "report", {"seconds": 0.1})
    if generations_done >= 1:
        trajs = rollouts()
        write_jsonl(run.trajectories(1), [t.to_dict() for t in trajs])
        records = [r for t in trajs for r in step_records(1, t)]
        GrowingBatch(run.batch).write_gen(1, records)
        state.mark(1, "rollout", {"seconds": 10.0, "episodes": 2})
        verdicts = {"verdicts_needed": 8, "verdicts_unparsed": 1, "verdicts_engine_failed": 0, "unparsed_rate": 0.125} \
            if ranker == "llm-judge" else {}
        state.mark(1, "rank", {"seconds": 2.0, "ranker_agreement": 0.75, "tie_rate": 0.25, **verdicts})
        state.mark(1, "store", {"seconds": 0.1, "records": len(records), "batch_records": len(records)})
        state.mark(1, "finetune", {"seconds": 30.0, "examples": 4, "steps": 2, "loss_first": 2.5, "loss_final": 1.25})
        state.mark(1, "broadcast", {"seconds": 0.5}, version=1)
        state.mark(1, "distil", {"seconds": 20.0, "students": {"S": {"examples": 4, "steps": 2, "loss_final": 1.5},
                                                                "XS": {"kept": True}}})
        evaluate(1)
        state.mark(1, "eval", {"seconds": 5.0})
    return run


class Page(HTMLParser):
    """Tables (rows in each tbody), the JSON island's text and the script count of a page."""

    def __init__(self):
        super().__init__()
        self.tables: list[int] = []
        self.island: str | None = None
        self.scripts = 0
        self._in_island = self._in_body = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(0)
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[-1] += 1
        elif tag == "script":
            self.scripts += 1
            self._in_island = dict(attrs).get("id") == "report-data"

    def handle_endtag(self, tag):
        self._in_body = self._in_body and tag != "tbody"
        self._in_island = self._in_island and tag != "script"

    def handle_data(self, data):
        if self._in_island:
            self.island = (self.island or "") + data


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("runs") / "full")
    return run, write_report(run.root)


def test_report_json_keeps_the_driver_keys_and_adds_the_sections(full):
    run, report = full
    assert report == json.loads(run.report.read_text())
    assert report["run"] == "full" and report["generations_done"] == 1 and report["policy_version"] == 1
    got = {(e["gen"], e["model"]): (e["accuracy"], e["n"]) for e in report["evals"]}
    assert got == {(0, "L"): (1.0, 2), (0, "S"): (0.5, 2), (0, "XS"): (0.0, 2),
                   (1, "L"): (1.0, 2), (1, "S"): (1.0, 2), (1, "XS"): (0.5, 2)}
    assert {e["dataset"] for e in report["evals"]} == {"test-questions"}
    assert report["evals"][0]["checkpoint"] == "/m/L-warm" and report["evals"][3]["checkpoint"].endswith("L-gen1")
    assert report["timings"]["gen-1"]["finetune"] == 30.0 and "report" not in report["timings"]["gen-1"]
    assert report["generations"]["gen-1"]["store"]["records"] == 4

    (t1,) = report["table1"]
    assert t1["columns"] == ["XS", "S", "L"] and [r["label"] for r in t1["rows"]] == ["warm start", "gen 1"]
    assert t1["rows"][1]["cells"]["XS"]["accuracy"] == 0.5 and t1["judge"] == JUDGE_DETERMINISTIC
    assert report["paper_table1"]["label"] == "paper, Bamboogle auto-eval, for shape only"
    assert report["paper_table1"]["rows"][2]["cells"] == {"XS": 65.9, "S": 69.7, "L": 76.1}
    # the target verdict (evals.targets): this run's warm start (100%) is above its band, gen 2 is not done
    v = report["verdict"]
    assert v["met"] is False and v["checks"]["warm_band"]["met"] is False and v["checks"]["l_gain"]["met"] is None
    assert v["line"] == "target not met: warm L 100.0 outside its band 15-50% (gen 1 of 2 done, L 100.0 -> 100.0)"


def test_ranker_and_step_statistics_have_known_values(full):
    _, report = full
    r = report["ranker"]["gen-1"]
    assert r["overall"] == {"steps": 5, "ranked": 5, "no_parseable": 1, "identical_samples": 0.4,
                            "agree_with_kept": 0.75, "agree_with_kept_text": 0.75,
                            "agree_with_lowest_perplexity": 0.75, "agree_with_kept_when_samples_differ": 0.6667}
    assert r["by_kind"]["decision"]["steps"] == 3 and r["by_kind"]["decision"]["agree_with_kept"] == 0.5
    assert sum(r["scores"]["counts"]) == 7 and sum(r["best_scores"]["counts"]) == 4  # parseable samples; picks
    s = report["steps"]["gen-1"]
    assert (s["episodes"], s["answered"], s["searches_per_episode"]) == (2, 0.5, 0.5)
    assert s["end_reasons"] == {"answered": 1, "unparseable:decision": 1}
    assert s["searches_histogram"]["counts"] == [1, 1, 0, 0] and s["parse_failure_rate"] == 0.3
    assert s["by_kind"]["decision"] == {"steps": 3, "samples": 6, "parse_failures": 2, "parse_failure_rate": 0.3333,
                                        "tokens": 24, "tokens_per_sample": 4.0}
    assert [(t["gen"], t["model"]) for t in report["training"]] == [(1, "L"), (1, "S"), (1, "XS")]
    assert report["training"][0]["loss_final"] == 1.25 and report["training"][2] == {"gen": 1, "model": "XS", "kept": True}
    p = report["phases"]
    assert p["phases"] == ["rollout", "rank", "store", "finetune", "broadcast", "distil", "eval", "report"]
    assert p["total"]["gen-1"] == pytest.approx(67.6)


def test_plots_are_pngs_and_the_page_is_self_contained(full):
    run, report = full
    assert report["plots"] == ["plots/accuracy.png", "plots/ranker_scores.png", "plots/steps.png", "plots/phases.png"]
    for rel in report["plots"]:
        assert (run.root / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run.root / "report.html").read_text()
    parser = Page()
    parser.feed(page)
    assert len(parser.tables) >= 8 and all(rows > 0 for rows in parser.tables)
    assert parser.scripts == 2 and page.count("data:image/png;base64,") == 4
    assert "http://" not in page and "https://" not in page and " src=\"/" not in page  # nothing to fetch
    assert "alert(1)" in page and "</script><script>alert" not in page  # model text cannot leave the island
    data = json.loads(parser.island)
    a, b = data["trajectories"]
    assert (a["golds"], a["answer"], a["correct"]) == (["Mara Quill"], "Mara Quill", True)
    assert (b["golds"], b["answer"], b["correct"]) == (["Kellmouth"], None, False)
    assert a["steps"][1]["snippets"][0]["text"] == EVIL and a["steps"][1]["query"] == "Brightwater Press"
    d = a["steps"][0]
    assert (d["kept"], d["ranker"]) == (0, 1) and [s["score"] for s in d["samples"]] == [1.0, 2.0]
    assert d["samples"][0]["ppl"] == pytest.approx(1.649, abs=1e-3) and d["samples"][1]["parsed"] is True
    assert "prompt" not in d
    assert "Table 1" in page and "paper, Bamboogle auto-eval, for shape only" in page
    main_start = page.index("<main>")  # the verdict is the first thing of the page's body
    assert page.index('<p id="verdict" class="verdict not-met">target not met: warm L 100.0', main_start) \
        == main_start + len("<main>")


def test_escaping_helpers():
    text = {"t": "</script><!-- & \u2028 <b>"}
    island = json_island(text)
    assert not set("<>&") & set(island) and json.loads(island) == text
    cell = table(["<h>"], [["<b>x</b>"]])
    assert "&lt;b&gt;x&lt;/b&gt;" in cell and "<b>" not in cell and "&lt;h&gt;" in cell
    assert table(["a"], []) == '<p class="empty">No data yet.</p>'


def test_a_warm_start_only_run_and_the_browser_cap(tmp_path):
    run = make_run(tmp_path / "runs" / "early", generations_done=0)
    report = write_report(run.root)
    assert report["generations_done"] == 0 and len(report["evals"]) == 3
    assert report["ranker"] == {} and report["steps"] == {} and report["training"] == []
    assert report["plots"] == ["plots/accuracy.png", "plots/phases.png"]
    parser = Page()
    parser.feed((run.root / "report.html").read_text())
    assert all(rows > 0 for rows in parser.tables) and json.loads(parser.island)["trajectories"] == []

    full_run = make_run(tmp_path / "runs2" / "capped")
    _, browser = collect(full_run.root, max_trajectories=1)
    assert [t["id"] for t in browser["trajectories"]] == ["q1#0"] and browser["totals"] == {"gen-1": 2}


def test_ablation_rows_and_the_cli(tmp_path, capsys):
    base = make_run(tmp_path / "runs" / "critic")
    other = make_run(tmp_path / "runs2" / "random", ranker="random")
    assert main(["report", str(base.root), str(other.root), "--max-trajectories", "1", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "6 evaluations, 1 rollouts in the browser, 4 plots" in out and "report.html" in out
    assert out.split("\n\n", 1)[1].startswith("target not met: warm L 100.0 outside its band 15-50%")  # the verdict first
    assert "| | XS | S | L |" in out and "| gen 1 | 50.0 [9.5\u201390.5] | 100.0 [34.2\u2013100.0] |" in out
    assert "| gen 2 | 65.9 | 69.7 | 76.1 |" in out and "paper, Bamboogle auto-eval, for shape only" in out
    rows = json.loads(base.report.read_text())["ablations"]
    assert [(r["run"], r["ranker"], r["gen"]) for r in rows] == [("critic", "critic", 1), ("random", "random", 1)]
    assert rows[0]["accuracy"] == {"L": 1.0, "S": 1.0, "XS": 0.5} and rows[0]["ranker_agreement"] == 0.75
    # the threshold in effect is the one for the row's own ranker kind (random has none by default)
    assert [(r["min_score"], r["self_checks"]) for r in rows] == [(2.0, True), (None, True)]
    html = (base.root / "report.html").read_text()
    assert "Ablations" in html and ">threshold</th>" in html and ">self-checks</th>" in html

    with pytest.raises(ReportError, match="not a run dir"):
        collect(tmp_path / "nowhere")
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a run dir (no config.yaml)" in err and err.count("\n") == 1


def test_an_llm_judged_run_reports_its_spread_and_exact_match_beside_it(tmp_path):
    """Scores of the LLM Check_Answer judge (mean over R runs) keep their spread, and exact match stays
    beside them in report.json, Table 1 and the page."""
    run = make_run(tmp_path / "judged")
    d = run.eval_dir(1, "L", "test-questions")
    score = json.loads((d / "score.json").read_text())
    score.update(accuracy=0.75, judge="llm: Check_Answer 5-shot (j), mean of 2 runs at T=0.5",
                 llm_judge={"runs": 2, "mean": 0.75, "std": 0.25 * 2 ** 0.5, "exact_match": 1.0,
                            "no_verdict_per_run": [1, 0], "accuracy_per_run": [0.5, 1.0]})
    (d / "score.json").write_text(json.dumps(score))
    report = write_report(run.root)
    judged = next(e for e in report["evals"] if (e["gen"], e["model"]) == (1, "L"))
    assert (judged["accuracy"], judged["exact_match"], judged["judge_runs"], judged["judge_no_verdict"]) == \
        (0.75, 1.0, 2, 1)
    assert "exact_match" not in next(e for e in report["evals"] if (e["gen"], e["model"]) == (1, "S"))
    cell = report["table1"][0]["rows"][1]["cells"]["L"]
    assert cell["judge_std"] == pytest.approx(0.3536, abs=1e-4) and cell["exact_match"] == 1.0
    html = run.report_html.read_text() if hasattr(run, "report_html") else (run.root / "report.html").read_text()
    assert "75.0 \u00b1 35.4 [" in html and "(EM 100.0)" in html and "<th>exact match</th>" in html


def test_the_llm_judge_rankers_unusable_verdicts_and_ties_are_reported(tmp_path):
    run = make_run(tmp_path / "judged-rank", ranker="llm-judge")
    report = write_report(run.root)
    assert report["generations"]["gen-1"]["rank"]["unparsed_rate"] == 0.125
    html = (run.root / "report.html").read_text()
    assert "<th>unusable verdicts</th>" in html and "12.5%" in html and "25.0%" in html
    verdicts = html[html.index("<th>ties where samples differ</th>"):]
    verdicts = verdicts[:verdicts.index("</table>")]  # the figures sit in that table's row, not elsewhere
    assert [c for c in ("25.0%", ">8<", ">1<", ">0<", "12.5%") if c not in verdicts] == []

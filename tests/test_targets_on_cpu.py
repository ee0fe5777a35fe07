"""The target verdict (evals.targets) on hand-made report dicts: a run that meets every target (the
README's default run), runs that miss some, runs not finished yet, and runs without students; then
the start-of-run warning read from a world.json written here."""

from __future__ import annotations

import json

import pytest

from evals.targets import Targets, verdict, warm_start_warning, world_closed_book, world_warning


def report(acc: dict[str, list[float | None]], generations: int = 2, dataset: str = "toy-test") -> dict:
    """A report.json as the driver writes it: accuracy % per model per generation (None: not evaluated)."""
    evals = [{"gen": g, "model": m, "dataset": dataset, "accuracy": a / 100, "n": 600}
             for g in range(generations + 1) for m, path in acc.items()
             if g < len(path) and (a := path[g]) is not None]
    evals += [{"gen": 0, "model": "L", "dataset": "bamboogle", "accuracy": 0.9, "n": 125}]  # not the first dataset
    return {"evals": evals, "setup": {"generations": generations}}


DEFAULT_RUN = {"XS": [8.3, 18.5, 22.5], "S": [20.0, 45.2, 44.7], "L": [21.3, 33.3, 48.0]}


def test_the_default_run_meets_every_target():
    v = verdict(report(DEFAULT_RUN), closed_book=0.0)
    assert v["met"] is True
    assert v["line"] == "target met: L 21.3 -> 33.3 -> 48.0 (+26.7), XS 22.5 >= 19.2, S 44.7 between, closed book 0.0 <= 2"
    c = v["checks"]
    assert set(c) == {"warm_band", "closed_book", "l_gain", "l_rising", "s_between", "xs_vs_warm"}
    assert all(x["met"] is True for x in c.values())
    assert c["l_gain"] == {"met": True, "value": 26.7, "need": 10.0}
    assert c["xs_vs_warm"] == {"met": True, "value": 22.5, "need": 19.17}
    assert c["s_between"]["need"] == [22.5, 48.0] and c["warm_band"]["need"] == [15.0, 50.0]
    # without the world's closed-book number the check is left out, not failed
    v = verdict(report(DEFAULT_RUN), closed_book=None)
    assert v["met"] is True and "closed_book" not in v["checks"] and v["line"].endswith("S 44.7 between")


def test_failures_are_named_and_only_they_are_listed():
    collapsed = {"XS": [0.0, 0.0, 0.0], "S": [0.0, 0.0, 0.0], "L": [3.0, 1.0, 0.2]}
    v = verdict(report(collapsed), closed_book=0.0)
    assert v["met"] is False
    assert v["line"] == ("target not met: warm L 3.0 outside its band 15-50%; L did not improve: 3.0 -> 1.0 -> 0.2; "
                         "XS 0.0 < 2.7 (0.9 x warm L)")
    assert v["checks"]["s_between"]["met"] is True and v["checks"]["closed_book"]["met"] is True

    seed_4242 = {"XS": [0.8, 1.3, 3.3], "S": [0.0, 4.5, 9.2], "L": [30.7, 34.3, 38.5]}
    v = verdict(report(seed_4242), closed_book=0.05)
    assert v["met"] is False and v["checks"]["l_rising"]["met"] is True
    assert v["line"] == ("target not met: L gained 7.8 < 10 points: 30.7 -> 34.3 -> 38.5; XS 3.3 < 27.6 "
                         "(0.9 x warm L); closed-book warm L 5.0 > 2")

    dip = {"XS": [8.3, 18.5, 22.5], "S": [20.0, 45.2, 50.0], "L": [21.3, 43.2, 31.8]}
    v = verdict(report(dip), closed_book=None)
    assert {n for n, c in v["checks"].items() if c["met"] is False} == {"l_rising", "s_between"}
    v2 = verdict(report({"L": [21.3, 20.0, 25.0]}), closed_book=None)
    assert v2["line"] == "target not met: L gained 3.7 < 10 points and did not rise at every generation: " \
                         "21.3 -> 20.0 -> 25.0"
    assert v["line"] == ("target not met: L did not rise at every generation: 21.3 -> 43.2 -> 31.8; "
                         "S 50.0 not between XS 22.5 and L 31.8")


def test_an_unfinished_run_is_not_yet_measurable():
    half = {m: path[:2] for m, path in DEFAULT_RUN.items()}
    v = verdict(report(half), closed_book=0.0)
    assert v["met"] is None
    assert v["line"] == "target not yet measurable: gen 1 of 2 done, L 21.3 -> 33.3; closed book 0.0 <= 2"
    assert v["checks"]["warm_band"]["met"] is True
    assert all(v["checks"][n] == {"met": None, "value": None, "need": None}
               for n in ("l_gain", "l_rising", "s_between", "xs_vs_warm"))
    # a failure already measured is reported at once, with how far the run got
    weak = {"XS": [1.0], "S": [2.0], "L": [3.0]}
    v = verdict(report(weak), closed_book=None)
    assert v["met"] is False
    assert v["line"] == "target not met: warm L 3.0 outside its band 15-50% (gen 0 of 2 done, L 3.0)"
    # a run configured for one generation can never measure the generation targets
    v = verdict(report(half, generations=1), closed_book=None)
    assert v["met"] is None and "the run has 1 generation, the targets need 2" in v["line"]
    assert verdict({"evals": []}, None) == {"met": None, "checks": {},
                                            "line": "target not yet measurable: no evaluation yet"}


def test_missing_students_degrade_gracefully():
    v = verdict(report({"L": DEFAULT_RUN["L"]}), closed_book=None)
    assert v["met"] is True and set(v["checks"]) == {"warm_band", "l_gain", "l_rising"}
    assert v["line"] == "target met: L 21.3 -> 33.3 -> 48.0 (+26.7)"
    v = verdict(report({"L": DEFAULT_RUN["L"], "XS": DEFAULT_RUN["XS"]}), closed_book=None)
    assert "s_between" not in v["checks"] and v["checks"]["xs_vs_warm"]["met"] is True
    v = verdict(report({"XS": DEFAULT_RUN["XS"]}), closed_book=None)
    assert v["met"] is None and v["line"] == "target not yet measurable: no warm-start L evaluation on toy-test"


def test_thresholds_are_inclusive_and_configurable():
    edge = {"XS": [0.0, 0.0, 13.5], "S": [0.0, 0.0, 13.5], "L": [15.0, 20.0, 25.0]}  # band edge, +10, 0.9 x 15
    assert verdict(report(edge), closed_book=0.02)["met"] is True
    strict = Targets(warm_low=20.0, l_gain=20.0)
    v = verdict(report(edge), closed_book=None, targets=strict)
    assert v["line"].startswith("target not met: warm L 15.0 outside its band 20-50%; L gained 10.0 < 20 points")


def test_warm_start_warnings_from_the_world(tmp_path):
    assert warm_start_warning(0.213, "toy-test", "world w") is None
    assert warm_start_warning(0.03, "toy-test", "world worlds/toy-1") == (
        "warning: warm start L 3.0% on toy-test is outside its band 15-50% (world worlds/toy-1); "
        "the run's result will not say much")
    world = tmp_path / "toy-1"
    world.mkdir()
    assert world_warning(world) is None and world_closed_book(world) is None and world_closed_book("") is None
    (world / "world.json").write_text(json.dumps({"evals": {
        "L-base": {"split": "test", "accuracy": 0.072, "n": 600},
        "L-warm-closed-book": {"split": "test", "accuracy": 0.0, "n": 600}}}))
    assert world_warning(world) == (f"warning: warm start L 7.2% on toy-test is outside its band 15-50% "
                                    f"(world {world}); the run's result will not say much")
    assert world_closed_book(world) == 0.0
    (world / "world.json").write_text("{not json")
    assert world_warning(world) is None and world_closed_book(world) is None


@pytest.mark.parametrize("acc", [0.15, 0.5, 0.3])
def test_in_band_warm_starts_do_not_warn(acc):
    assert warm_start_warning(acc, "toy-test", "x") is None

"""What a run reports as it goes: Ray metrics for the dashboard, one JSON line per phase on disk.

Ray exports ``ray.util.metrics`` through each node's metrics agent to Prometheus
(``ray start --metrics-export-port``) and the dashboard, with a ``ray_`` prefix:
``ray_rest_react_episodes_total`` and so on (counters get ``_total``, the loss
histogram ``_bucket``/``_sum``/``_count``). Counters and histograms stay exported after
the driver exits; gauges (tokens/s, ranker agreement, phase times) only while it
runs. Every metric is tagged with the run name so
runs sharing a cluster stay apart. ``metrics.jsonl`` in the run dir keeps the same
numbers per phase (wall time plus the phase's counters), so a run can be profiled
after the fact without a dashboard.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ray.util import metrics as ray_metrics

#: histogram bucket bounds of the per-step training loss (nats per token)
LOSS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


class RunMetrics:
    """The run's Ray metrics (created once Ray is up) and its ``metrics.jsonl`` writer."""

    def __init__(self, jsonl_path: str | os.PathLike, run: str):
        self.path = Path(jsonl_path)
        self.run = run
        tags = ("run",)
        self.episodes = ray_metrics.Counter(
            "rest_react_episodes", "Episodes (trajectories) the samplers finished.", tag_keys=tags)
        self.generated_tokens = ray_metrics.Counter(
            "rest_react_generated_tokens", "Tokens sampled by the samplers (all K samples).", tag_keys=tags)
        self.parse_failures = ray_metrics.Counter(
            "rest_react_parse_failures", "Samples whose text did not parse.", tag_keys=tags)
        self.tokens_per_s = ray_metrics.Gauge(
            "rest_react_tokens_per_second", "Generated tokens per second over the last rollout.", tag_keys=tags)
        self.ranker_agreement = ray_metrics.Gauge(
            "rest_react_ranker_agreement",
            "Share of LLM steps where the ranker's pick is the sample the rollout continued with.", tag_keys=tags)
        # a histogram of every optimizer step's loss: unlike a gauge, Prometheus keeps it after the driver exits
        self.learner_loss = ray_metrics.Histogram(
            "rest_react_learner_loss", "Training loss of every optimizer step (mean over ranks).",
            boundaries=list(LOSS_BUCKETS), tag_keys=("run", "model"))
        self.phase_seconds = ray_metrics.Gauge(
            "rest_react_phase_seconds", "Wall time of the last run of each phase.", tag_keys=("run", "phase"))
        self.rollout_share = ray_metrics.Gauge(
            "rest_react_rollout_share",
            "Share of the samplers' time in the last rollout per part (engine, search, rank, idle_tail...).",
            tag_keys=("run", "part"))
        self._tags = {"run": run}

    # ---------------------------------------------------------------- Ray metrics

    def rollout(self, episodes: int, tokens: int, parse_failures: int, seconds: float) -> None:
        if episodes:
            self.episodes.inc(episodes, tags=self._tags)
        if tokens:
            self.generated_tokens.inc(tokens, tags=self._tags)
        if parse_failures:
            self.parse_failures.inc(parse_failures, tags=self._tags)
        self.tokens_per_s.set(tokens / seconds if seconds > 0 else 0.0, tags=self._tags)

    def rollout_breakdown(self, breakdown: dict[str, Any]) -> None:
        """Export where the last rollout's sampler time went (``SamplerPool``'s profile shares)."""
        for part, share in breakdown.get("map", {}).get("shares", {}).items():
            self.rollout_share.set(share, tags={**self._tags, "part": part})

    def agreement(self, fraction: float) -> None:
        self.ranker_agreement.set(fraction, tags=self._tags)

    def losses(self, model: str, values: list[float]) -> None:
        for v in values:
            self.learner_loss.observe(v, tags={**self._tags, "model": model})

    # ---------------------------------------------------------------- metrics.jsonl

    def phase_done(self, gen: int, phase: str, seconds: float, counters: dict[str, Any]) -> dict[str, Any]:
        """Record a finished phase: the phase-time gauge and one line appended to metrics.jsonl."""
        self.phase_seconds.set(seconds, tags={**self._tags, "phase": phase})
        line = {"time": round(time.time(), 3), "run": self.run, "gen": gen, "phase": phase,
                "seconds": round(seconds, 3), **counters}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = memoryview((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError:  # disk full: cut the half-written line off again, so the file stays valid JSONL
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)
        return line

"""Drive many episodes at once, batching their LLM and search calls in waves.

A wave is: every episode in flight waits on an LLM step (whatever its kind), so all
their prompts go to ONE ``engine.generate`` call; the episodes whose chosen action
was ``Search`` then send their queries to ONE ``search.search`` call, and their
next LLM step (summarize) joins the next wave. Finished episodes leave after each
wave and queued ones take their places, so the batch stays full.

Failures stay inside the runner: an engine exception ends that wave's episodes
(``engine_failed: <msg>``), a search exception ends the searching ones
(``search_failed: <msg>``), and any other error in one episode's step ends that
episode only (``error: <Type>: <msg>``). ``run`` always returns every trajectory.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import prompts
from agent.episode import Chooser, Episode, lowest_nll_parseable
from agent.trajectory import Question, Trajectory
from core.config import AgentConfig
from core.engine import Engine, Sample
from core.errors import one_line
from core.search import SearchBackend
from core.seeds import wave_seed


@dataclass
class RunnerStats:
    """Counters over a runner's lifetime (all ``run`` calls): what profiling builds on."""

    waves: int = 0
    #: wall time inside ``run``: the sum of the four parts below
    run_seconds: float = 0.0
    engine_calls: int = 0
    engine_seconds: float = 0.0
    search_calls: int = 0
    search_seconds: float = 0.0
    #: time a ranker spent picking the sample each step continues with (``rest.continue_with=ranker``)
    rank_seconds: float = 0.0
    #: wall time of ``run`` outside engine, search and ranker calls (prompts, parsing, bookkeeping)
    other_seconds: float = 0.0
    prompts: int = 0
    samples: int = 0
    generated_tokens: int = 0
    #: samples that did not parse
    parse_failures: int = 0
    #: end reason up to its first ": " (``answered``, ``unparseable:answer``, ``engine_failed``...)
    episodes_by_end_reason: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()}


class EpisodeRunner:
    """Runs episodes of the agent for a set of questions (see the module doc).

    ``search=None`` is closed-book mode: episodes go straight to the answer step.
    ``choose`` picks the sample each LLM step continues with (default: lowest
    perplexity among the parseable ones).
    """

    def __init__(
        self,
        engine: Engine,
        search: SearchBackend | None,
        cfg: AgentConfig,
        policy_version: int = 0,
        choose: Chooser = lowest_nll_parseable,
    ):
        self.engine = engine
        self.search = search
        self.cfg = cfg
        self.policy_version = policy_version
        self.choose = choose
        self.stats = RunnerStats()

    def run(
        self,
        questions: Sequence[Question],
        trajectories_per_question: int = 1,
        on_done: Callable[[Trajectory], None] | None = None,
    ) -> list[Trajectory]:
        """Run ``trajectories_per_question`` episodes per question; results in input order.

        Trajectory ids are ``f"{question.id}#{j}"``. ``on_done`` is called with each
        trajectory as soon as it ends (exceptions it raises are the caller's own and
        propagate).
        """
        if trajectories_per_question < 1:
            raise ValueError(f"trajectories_per_question must be >= 1, got {trajectories_per_question}")
        start = time.perf_counter()
        spent0 = self._timed_parts()
        queue = deque(
            (slot, q, j)
            for slot, (q, j) in enumerate((q, j) for q in questions for j in range(trajectories_per_question))
        )
        results: list[Trajectory | None] = [None] * len(queue)
        in_flight: list[tuple[int, Episode]] = []
        wave = 0
        while queue or in_flight:
            while queue and len(in_flight) < self.cfg.max_episodes_in_flight:
                slot, q, j = queue.popleft()
                in_flight.append((slot, self._new_episode(q, j)))
            episodes = [ep for _, ep in in_flight]
            self._llm_phase(episodes, wave)
            self._search_phase([ep for ep in episodes if ep.waiting == "search"])
            self.stats.waves += 1
            wave += 1
            still: list[tuple[int, Episode]] = []
            for slot, ep in in_flight:
                if ep.waiting == "done":
                    results[slot] = ep.traj
                    self._count_end(ep.traj)
                    if on_done is not None:
                        on_done(ep.traj)
                else:
                    still.append((slot, ep))
            in_flight = still
        elapsed = time.perf_counter() - start
        self.stats.run_seconds += elapsed
        self.stats.other_seconds += max(0.0, elapsed - (self._timed_parts() - spent0))
        return [t for t in results if t is not None]

    def _timed_parts(self) -> float:
        s = self.stats
        return s.engine_seconds + s.search_seconds + s.rank_seconds

    def _new_episode(self, q: Question, j: int) -> Episode:
        traj = Trajectory(
            id=f"{q.id}#{j}", question_id=q.id, question=q.question, policy_version=self.policy_version
        )
        return Episode(traj, self.cfg, closed_book=self.search is None, choose=self.choose)

    # ------------------------------------------------------------ one wave

    def _llm_phase(self, episodes: list[Episode], wave: int) -> None:
        """One engine call for every episode waiting on an LLM step."""
        batch: list[Episode] = []
        texts: list[str] = []
        for ep in episodes:
            if ep.waiting != "llm":
                continue
            prompt = _guarded(ep, ep.prompt)
            if prompt is not None:
                batch.append(ep)
                texts.append(prompt)
        if not batch:
            return
        t0 = time.perf_counter()
        try:
            outputs = self.engine.generate(
                texts,
                n=self.cfg.k_samples,
                temperature=self.cfg.temperature,
                max_new_tokens=self.cfg.max_new_tokens,
                stop=prompts.STOP,
                seed=wave_seed(self.cfg.seed, wave),
            )
            if len(outputs) != len(texts):
                raise RuntimeError(f"engine returned {len(outputs)} sample lists for {len(texts)} prompts")
        except Exception as e:  # any engine failure ends the wave, never the run
            for ep in batch:
                ep.end(f"engine_failed: {one_line(e)}")
            return
        finally:
            self.stats.engine_calls += 1
            self.stats.engine_seconds += time.perf_counter() - t0
        self.stats.prompts += len(texts)
        for ep, samples in zip(batch, outputs, strict=True):
            _guarded(ep, self._feed_samples, ep, samples)

    def _feed_samples(self, ep: Episode, samples: list[Sample]) -> None:
        n_steps = len(ep.traj.steps)
        ep.feed_samples(samples)
        step = ep.traj.steps[n_steps]  # the LLM step just recorded
        self.stats.samples += len(step.samples)
        self.stats.generated_tokens += sum(s.n_tokens for s in step.samples)
        self.stats.parse_failures += step.parse_ok.count(False)

    def _search_phase(self, episodes: list[Episode]) -> None:
        """One search call for every episode waiting on a search."""
        batch: list[Episode] = []
        queries: list[str] = []
        for ep in episodes:
            query = _guarded(ep, ep.query)
            if query is not None:
                batch.append(ep)
                queries.append(query)
        if not batch:
            return
        if self.search is None:  # cannot happen: closed-book episodes never search
            for ep in batch:
                ep.end("error: RuntimeError: search requested in closed-book mode")
            return
        t0 = time.perf_counter()
        try:
            results = self.search.search(queries, self.cfg.topk)
            if len(results) != len(queries):
                raise RuntimeError(f"search returned {len(results)} result lists for {len(queries)} queries")
        except Exception as e:  # any search failure ends those episodes, never the run
            for ep in batch:
                ep.end(f"search_failed: {one_line(e)}")
            return
        finally:
            self.stats.search_calls += 1
            self.stats.search_seconds += time.perf_counter() - t0
        for ep, passages in zip(batch, results, strict=True):
            _guarded(ep, ep.feed_passages, passages)

    def _count_end(self, traj: Trajectory) -> None:
        key = traj.end_reason.split(": ", 1)[0]
        counts = self.stats.episodes_by_end_reason
        counts[key] = counts.get(key, 0) + 1


def _guarded(ep: Episode, fn, *args):
    """Call one episode's step; an unexpected error ends that episode only (returns None)."""
    try:
        return fn(*args)
    except Exception as e:  # contain the failure to this episode
        ep.end(f"error: {type(e).__name__}: {one_line(e)}")
        return None

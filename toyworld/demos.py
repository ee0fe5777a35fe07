"""A programmatic, deliberately noisy demonstrator: the toy world's analog of few-shot prompting.

The base models learn the agent's step grammar from these demonstrations (DESIGN
section 5). The demonstrator drives the real state machine (``agent.episode.Episode``)
against real BM25 search over its world's corpus: at each LLM step it writes the one
completion it chooses, feeds it as a one-sample list, and the episode records prompt
and completion exactly as inference will see them. Its policy reads only what the
episode has shown it (the snippets, the notes it wrote) plus the question's plan (which
relation each hop follows, from the record's gold facts):

- decision: search ``"<entity> <keyword>"`` for the next hop, where the entity is the
  question's (first hop) or the object of its own latest note (later hops); terminate
  once every hop has a note;
- summarize: copy the snippet sentence(s) that state the hop's fact, cited
  ``[link_id=N]``; ``None`` when no snippet is about the hop's entity;
- answer: the object of the latest note (comparisons: the founder of the company whose
  note gives the earlier year), citing that note; self-checks: ``Keep()``.

Noise: each of its decisions goes wrong with probability ``noise`` (a mistake of a kind
that fits the step, see ``NOISE_KINDS``). It then follows its own notes as written: a
wrong note sends the next query to the wrong entity, a ``None`` makes it search again.
A self-check revises a wrong answer to the one its notes support with probability
``fix_rate``. Every choice comes from ``random.Random(f"demo:{seed}:{question id}")``,
so a question's demonstration does not depend on what else is in the batch.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import prompts
from agent.episode import Episode
from agent.trajectory import Trajectory
from core.config import AgentConfig
from core.engine import Sample
from core.search import SearchBackend, Snippet
from learner.data import SFTExample
from prompts.actions import Answer, Keep, Revise, Search, Summary, Terminate
from toyworld.graph import World
from toyworld.questions import CHAINS, COMPARISON, HOP_KEYWORDS
from toyworld.render import PHRASES, Corpus

#: kinds of deliberate mistakes, by the step they happen at
NOISE_KINDS: dict[str, str] = {
    "vague_query": "decision: the query drops its keyword or a word of the entity's name",
    "lookalike_query": "decision: the query names a look-alike (or another entity of the same kind)",
    "early_answer": "decision: Terminate() before the last hop (the answer comes from the latest note)",
    "missed_snippet": "summarize: None although a snippet states the hop's fact",
    "wrong_snippet": "summarize: copies the same kind of fact from a snippet about another entity",
    "wrong_answer": "answer: an earlier note's object or the searched entity instead of the latest object",
}
#: a self-check that replaced a wrong answer by the one the notes support (not a mistake)
FIX = "revise_fix"
#: failed searches for one hop before the demonstrator gives up and answers
MAX_ATTEMPTS = 3
#: share of the decision mistakes (after a first note) that are early answers rather than bad queries
EARLY_SHARE = 0.4
_MAX_WAVES = 200


@dataclass
class Demo:
    """One demonstration: the recorded trajectory, its mistakes and whether it answered right."""

    trajectory: Trajectory
    gold: str
    noise_events: list[str]
    correct: bool

    def examples(self) -> list[SFTExample]:
        """One SFT example per LLM step: the step's prompt, the completion plus its ``"\\n"`` stop."""
        return [SFTExample(s.prompt, s.samples[0].text + "\n") for s in self.trajectory.llm_steps()]


@dataclass
class DemoSet:
    """All demonstrations of a run, with the counts ``world.json`` reports."""

    demos: list[Demo]

    def examples(self) -> list[SFTExample]:
        return [ex for d in self.demos for ex in d.examples()]

    @property
    def accuracy(self) -> float:
        return sum(d.correct for d in self.demos) / max(1, len(self.demos))

    def stats(self) -> dict:
        kinds = {k: sum(k in d.noise_events for d in self.demos) for k in (*NOISE_KINDS, FIX)}
        return {
            "trajectories": len(self.demos),
            "steps": sum(len(d.trajectory.llm_steps()) for d in self.demos),
            "accuracy": round(self.accuracy, 4),
            "clean_trajectories": sum(not set(d.noise_events) - {FIX} for d in self.demos),
            "trajectories_with": kinds,
        }


# ---------------------------------------------------------------- reading the world


def _phrase_regex(template: str) -> str:
    """A rendering template as a regex with groups ``s`` (subject) and ``o`` (object)."""
    parts = re.split(r"(\{s\}|\{o\})", template)
    out = []
    for p in parts:
        out.append("(?P<s>.+?)" if p == "{s}" else "(?P<o>.+?)" if p == "{o}" else re.escape(p))
    return "".join(out)


_SENTENCE_END = re.compile(r"(?<=\.)\s+")


class WorldFacts:
    """What the demonstrator may look up: which passage states a fact, and in which sentence."""

    def __init__(self, world: World, corpus: Corpus):
        self.world = world
        self.where = corpus.where
        self.text = {p["id"]: p["text"] for p in corpus.passages}
        self.by_name = {e.name: e.id for e in world.entities.values()}
        self.alikes: dict[str, list[str]] = {}
        for e in world.entities.values():
            if e.lookalike_of is not None:
                src = world.entities[e.lookalike_of].name
                self.alikes.setdefault(e.name, []).append(src)
                self.alikes.setdefault(src, []).append(e.name)
        self._patterns = {
            r: [re.compile(_phrase_regex(t[0].upper() + t[1:]) + "$") for t in ts] for r, ts in PHRASES.items()
        }

    def passage_of(self, name: str, relation: str) -> str | None:
        """Id of the passage stating ``relation`` of the entity named ``name`` (None if no such fact)."""
        eid = self.by_name.get(name)
        return None if eid is None else self.where.get((eid, relation))

    def subject(self, passage_id: str) -> str:
        """The name of the entity a passage is about (ids are ``<entity id>-<k>``)."""
        return self.world.entities[passage_id.rsplit("-", 1)[0]].name

    def fact(self, passage_id: str, relation: str) -> tuple[str, str] | None:
        """(object, sentence) of ``relation`` as the passage states it, or None if it does not."""
        eid = passage_id.rsplit("-", 1)[0]
        if self.where.get((eid, relation)) != passage_id:
            return None
        obj = self.world.label(self.world.obj(eid, relation))
        for sentence in _SENTENCE_END.split(self.text[passage_id]):
            for pat in self._patterns[relation]:
                m = pat.match(sentence)
                if m and m.group("o") in (obj, f"a {obj}", f"an {obj}"):  # occupations carry an article
                    return obj, sentence
        raise ValueError(f"{passage_id}: no sentence states its {relation} fact {obj!r}")


# ---------------------------------------------------------------- one episode's policy


@dataclass
class _Note:
    """A note the demonstrator wrote: for which hop, what it says, where from."""

    hop: int
    link_id: int
    subject: str
    obj: str
    extra: dict[str, str] = field(default_factory=dict)  # comparisons: the founder beside the year


class _Policy:
    """The demonstrator's choices for one question (see the module doc)."""

    def __init__(self, record: dict, facts: WorldFacts, noise: float, fix_rate: float, rng: random.Random):
        self.facts, self.noise, self.fix_rate, self.rng = facts, noise, fix_rate, rng
        self.comparison = record["template"] == COMPARISON
        if self.comparison:
            self.relations = ["founded_year", "founded_year"]
        else:
            (chain,) = [t for t in CHAINS if t.name == record["template"]]
            self.relations = list(chain.relations)
        self.hop_entities = [h["entity"] for h in record["hops"]]
        self.hop = 0
        self.belief = self.hop_entities[0]  # the entity the current hop is about
        self.attempts = 0
        self.last_query_clean = True
        self.notes: list[_Note] = []
        self.events: list[str] = []
        self.answer_given: str | None = None

    def _slip(self) -> bool:
        return self.rng.random() < self.noise

    # -- decision

    def decide(self, remaining: int) -> Search | Terminate:
        if self.hop >= len(self.relations) or self.attempts >= MAX_ATTEMPTS or remaining <= 0:
            return Terminate()
        slip = self._slip()
        if slip and self.notes and self.rng.random() < EARLY_SHARE:
            self.events.append("early_answer")
            return Terminate()
        keyword = HOP_KEYWORDS[self.relations[self.hop]]
        clean = f"{self.belief} {keyword}"
        if self.attempts > 0 and self.last_query_clean:  # the clean query found nothing: rephrase
            query = self.belief if self.attempts == 1 else f"{keyword} of {self.belief}"
        elif slip:
            query = self._bad_query(keyword)
        else:
            query = clean
        self.last_query_clean = query == clean
        return Search(query)

    def _bad_query(self, keyword: str) -> str:
        alikes = self.facts.alikes.get(self.belief, [])
        if alikes and self.rng.random() < 0.5:
            self.events.append("lookalike_query")
            return f"{self.rng.choice(alikes)} {keyword}"
        self.events.append("vague_query")
        words = self.belief.split()
        if len(words) > 1 and self.rng.random() < 0.5:
            del words[self.rng.randrange(len(words))]
            return f"{' '.join(words)} {keyword}"
        return self.belief

    # -- summarize

    def _sentences(self, passage_id: str, relation: str) -> tuple[str, str, dict[str, str]] | None:
        """(object, copied text, extra facts) the demonstrator notes from one passage, or None."""
        found = self.facts.fact(passage_id, relation)
        if found is None:
            return None
        obj, sentence = found
        extra: dict[str, str] = {}
        if self.comparison:  # the founder is needed for the answer: note both sentences, in passage order
            founder = self.facts.fact(passage_id, "founded_by")
            if founder is not None:
                extra["founder"] = founder[0]
                order = self.facts.text[passage_id]
                pair = sorted([sentence, founder[1]], key=order.index)
                sentence = " ".join(pair)
        return obj, sentence, extra

    def summarize(self, snippets: Sequence[Snippet]) -> Summary:
        relation = self.relations[self.hop]
        target = self.facts.passage_of(self.belief, relation)
        hit = next((s for s in snippets if s.doc_id == target), None) if target else None
        others = [s for s in snippets if s.doc_id != target and self.facts.fact(s.doc_id, relation)]
        use: Snippet | None = hit
        if self._slip():
            if others and (hit is None or self.rng.random() < 0.6):
                use = self.rng.choice(others)
                self.events.append("wrong_snippet")
            elif hit is not None:
                use = None
                self.events.append("missed_snippet")
        if use is None:
            self.attempts += 1
            return Summary(None, ())
        obj, text, extra = self._sentences(use.doc_id, relation)  # type: ignore[misc]
        self.notes.append(_Note(self.hop, use.link_id, self.facts.subject(use.doc_id), obj, extra))
        self.hop += 1
        self.attempts = 0
        self.last_query_clean = True
        if self.hop < len(self.relations):
            self.belief = self.hop_entities[self.hop] if self.comparison else obj
        return Summary(f"{text} [link_id={use.link_id}]", (use.link_id,))

    # -- answer and checks

    def supported(self, shown: Sequence[int]) -> tuple[str, int]:
        """The answer its notes support, with the link id to cite."""
        if not self.notes:
            return self.belief, shown[0]
        if self.comparison:
            dated = [n for n in self.notes if "founder" in n.extra]
            if dated:
                oldest = min(dated, key=lambda n: (int(n.obj), n.hop))
                return oldest.extra["founder"], oldest.link_id
        last = self.notes[-1]
        return last.obj, last.link_id

    def answer(self, shown: Sequence[int]) -> Answer:
        text, link = self.supported(shown)
        if self.notes and self._slip():
            wrong = self._wrong_answer()
            if wrong is not None:
                text, link = wrong
                self.events.append("wrong_answer")
        self.answer_given = text
        return Answer(f"{text} [link_id={link}]", (link,))

    def _wrong_answer(self) -> tuple[str, int] | None:
        last = self.notes[-1]
        if self.comparison:
            dated = [n for n in self.notes if "founder" in n.extra]
            if len(dated) == 2:
                younger = max(dated, key=lambda n: (int(n.obj), n.hop))
                return younger.extra["founder"], younger.link_id
            return None
        if len(self.notes) > 1 and self.rng.random() < 0.5:
            earlier = self.notes[-2]
            return earlier.obj, earlier.link_id
        return last.subject, last.link_id

    def check(self, shown: Sequence[int]) -> Keep | Revise:
        right, link = self.supported(shown)
        if self.answer_given != right and self.rng.random() < self.fix_rate:
            self.events.append(FIX)
            self.answer_given = right
            return Revise(Answer(f"{right} [link_id={link}]", (link,)))
        return Keep()


# ---------------------------------------------------------------- driving episodes


def _completion(ep: Episode, policy: _Policy) -> str:
    """The completion the policy writes for the step ``ep`` waits on (leading space included)."""
    if ep.kind == "decision":
        return prompts.format_decision(policy.decide(ep.remaining_searches))
    if ep.kind == "summarize":
        return prompts.format_summary(policy.summarize(ep.traj.steps[-1].snippets))
    if ep.kind == "answer":
        return prompts.format_answer(policy.answer(ep.shown))
    if ep.kind in ("relevance", "grounding"):
        return prompts.format_check(policy.check(ep.shown))
    raise RuntimeError(f"demonstrator: no completion for state {ep.kind!r}")


def demonstrate(
    records: Sequence[dict],
    facts: WorldFacts,
    search: SearchBackend,
    cfg: AgentConfig,
    *,
    noise: float = 0.35,
    fix_rate: float = 0.5,
    seed: int = 0,
) -> DemoSet:
    """Run the demonstrator on every question record (with ``hops``/``template``); one demo each.

    Episodes advance in waves so that each wave's searches go to one batched
    ``search.search`` call. Every completion must parse: a demonstrator bug is an
    AssertionError, never a silently dropped example.
    """
    if not 0.0 <= noise <= 1.0 or not 0.0 <= fix_rate <= 1.0:
        raise ValueError(f"noise and fix_rate must be in [0, 1], got {noise!r}, {fix_rate!r}")
    if cfg.prompt_style != "zeroshot":
        raise ValueError(f"the demonstrator writes zeroshot prompts, got prompt_style={cfg.prompt_style!r}")
    live: list[tuple[Episode, _Policy, dict]] = []
    for r in records:
        traj = Trajectory(id=f"{r['id']}#demo", question_id=r["id"], question=r["question"])
        policy = _Policy(r, facts, noise, fix_rate, random.Random(f"demo:{seed}:{r['id']}"))
        live.append((Episode(traj, cfg), policy, r))
    for _ in range(_MAX_WAVES):
        searching = []
        for ep, policy, _r in live:
            while ep.waiting == "llm":
                text = _completion(ep, policy)
                ep.feed_samples([Sample(text, n_tokens=max(1, len(text.split())), sum_logprob=0.0)])
                step = ep.traj.llm_steps()[-1]
                assert step.parse_ok == [True], f"demonstrator wrote an unparseable {step.kind}: {step.error}"
            if ep.waiting == "search":
                searching.append(ep)
        if not searching:
            break
        results = search.search([ep.query() for ep in searching], cfg.topk)
        for ep, passages in zip(searching, results, strict=True):
            ep.feed_passages(passages)
    else:
        raise RuntimeError(f"demonstrator: episodes still running after {_MAX_WAVES} waves")
    demos = []
    for ep, policy, r in live:
        gold = r["answers"][0]
        assert ep.traj.end_reason == "answered", f"{r['id']}: demonstration ended with {ep.traj.end_reason}"
        demos.append(Demo(ep.traj, gold, policy.events, ep.traj.answer == gold))
    return DemoSet(demos)

"""Skill probes: does a base copy a name out of its context, and answer from its notes?

A base is only useful as a warm start (or a student's base) if it has the skills the
agent's steps need: copying a snippet's sentence into a note (names included),
copying a name into the next query, and answering with the object of the latest note.
Whether a tiny model trained from scratch *uses* copying inside the world's data, or
fills names from memory, is not something to hope for: the build measures it while
the base trains, trains it on (within a budget) while a gated skill is short, and stops
the build with one line if it is still short (``toyworld.base_models``).

The probe set is a world of its own, never trained on: an auxiliary world with its own
seed (``PROBE_AUX``), a clean demonstrator (no mistakes) on its first questions, and
every step under a fresh renaming (``toyworld.rename``), so a name can only be predicted
by copying it. Each probe step is decoded greedily and judged by its names, not its
wording (a note may restate a sentence in another template, as the critic allows):

- copy (summarize): the note parses as the agent parses it, so its citations are among
  the shown link ids (a base that cites a link it was not shown ends its episode there);
  every name word of the note is in the snippets, and every name word of the demonstrated
  note is in it (the wrong first name, the wrong city: not copied);
- query (decide): every name word of the query is in the question or the notes, and it
  names what the demonstrated query names;
- answer: the answer, citations aside, is the demonstrated one.

``greedy_match`` is the stricter teacher-forced test (the whole completion, word for word).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from agent.parsers import ParseError, parse_summary
from learner.data import IGNORE, SFTExample, collate, make_batches, tokenize_all
from toyworld.build import aux_seed, write_corpus, write_jsonl
from toyworld.demos import WorldFacts, demonstrate
from toyworld.errors import SkillGateError  # noqa: F401 (re-exported: where gates live)
from toyworld.graph import make_world
from toyworld.questions import balanced_sample, generate_questions
from toyworld.rename import Renamer, name_words_in
from toyworld.render import render_world

#: the auxiliary-world index of the probe world (the build's training worlds are 0 .. n_aux-1)
PROBE_AUX = 1000
#: step kind (the prompt's first word) -> the skill it shows
SKILL_OF_STEP = {"def summarize": "copy", "def decide": "query", "def answer": "answer"}
SKILLS = ("copy", "query", "answer")
#: the longest completion a probe step of each skill needs (its demonstrated ones: at most 40, 12, 12 tokens)
MAX_NEW_TOKENS = {"copy": 48, "query": 16, "answer": 16}
#: what each skill is, for one-line errors ("L-base did not learn to ...")
SKILL_TEXT = {"copy": "copy a snippet's sentence into a note", "query": "copy a name into its next query",
              "answer": "answer from its notes"}


@dataclass(frozen=True)
class SkillGate:
    """The lowest probe accuracy per skill a base must reach; below it after its budget, the build stops."""

    copy: float = 0.0
    query: float = 0.0
    answer: float = 0.0

    def missing(self, scores: dict[str, float]) -> list[str]:
        """The skills whose score is below the gate, worst shortfall first."""
        short = [(s, getattr(self, s) - scores.get(s, 0.0)) for s in SKILLS if scores.get(s, 0.0) < getattr(self, s)]
        return [s for s, _ in sorted(short, key=lambda x: -x[1])]


def skill_of(ex: SFTExample) -> str | None:
    """The skill a demonstration step shows (None: a self-check, or a summary of nothing)."""
    for head, skill in SKILL_OF_STEP.items():
        if ex.prompt.startswith(head):
            if skill == "copy" and ex.completion.strip() == "None":
                return None
            if skill == "query" and "Search(" not in ex.completion:
                return None
            return skill
    return None


def probe_examples(root: Path, seed: int, world_size, agent, n_questions: int = 120,
                   per_skill: int = 100) -> dict[str, list[SFTExample]]:
    """The probe set of a world of ``seed``: up to ``per_skill`` renamed clean steps per skill.

    Writes the probe world's corpus and questions under ``root/probe`` (its BM25 index goes
    to ``root/.cache``), so a base can also be run end to end there; deterministic per ``seed``.
    """
    p_seed = aux_seed(seed, PROBE_AUX)
    target = make_world(seed, world_size).triples()
    world = make_world(p_seed, world_size, avoid=target)
    corpus = render_world(world)
    drafts = balanced_sample(generate_questions(world, corpus), n_questions, random.Random(f"probe:{p_seed}"))
    records = [{"id": f"probe-{i:04d}", **d.record} for i, d in enumerate(drafts)]
    path = root / "probe" / "corpus.jsonl.gz"
    write_corpus(path, corpus)
    write_jsonl(root / "probe" / "questions.jsonl", records)
    from actors.search.bm25 import BM25Search  # bm25s pulls in numba: only where an index is built

    search = BM25Search(path, cache_dir=root / ".cache" / "bm25")
    demos = demonstrate(records, WorldFacts(world, corpus), search, agent, noise=0.0, fix_rate=1.0, seed=p_seed)
    rename = Renamer(p_seed)
    out: dict[str, list[SFTExample]] = {s: [] for s in SKILLS}
    for ex in demos.examples():
        skill = skill_of(ex)
        if skill is not None and len(out[skill]) < per_skill:
            prompt, completion = rename(ex.prompt, ex.completion)
            out[skill].append(SFTExample(prompt, completion))
    return out


@torch.no_grad()
def greedy_match(model, tokenizer, examples: Sequence[SFTExample], max_len: int = 320,
                 batch_size: int = 32) -> float:
    """Share of ``examples`` whose completion greedy decoding reproduces exactly (teacher-forced argmax)."""
    data, _ = tokenize_all(tokenizer, examples, max_len)
    if not data:
        return 0.0
    pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    was_training = model.training
    model.eval()
    right = 0
    try:
        for idx in make_batches(data, batch_size=batch_size, shuffle_seed=0):
            batch = collate([data[i] for i in idx], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            targets = batch["labels"][:, 1:]
            keep = targets != IGNORE
            wrong = (logits.argmax(-1) != targets) & keep
            right += int((~wrong.any(dim=1)).sum())
    finally:
        model.train(was_training)
    return right / len(data)


@torch.no_grad()
def greedy_lines(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64,
                 batch_size: int = 32) -> list[str]:
    """Each prompt's greedy completion up to its first newline (bos + prompt, as the learner encodes it)."""
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    encoded = [bos + list(tokenizer.encode(p, add_special_tokens=False)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    out: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # left padding: every row's next token is at the end
                ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[r, width - len(encoded[i]):] = 1
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad_id, stop_strings=["\n"], tokenizer=tokenizer)
            for r, i in enumerate(rows):
                text = tokenizer.decode(gen[r, width:], skip_special_tokens=True)
                out[i] = text.split("\n")[0]
    finally:
        model.train(was_training)
    return out


_CITATION = re.compile(r"\s*\[link_id=\d+\]")
_SHOWN = re.compile(r"Snippet\(link_id=(\d+),")


def _names(text: str) -> set[str]:
    return set(name_words_in(text))


def _context(prompt: str, skill: str) -> str:
    """The part of a prompt a step may copy names from."""
    if skill == "copy":
        return prompt[prompt.find("SNIPPETS ="):]
    return prompt


def _parses_as_note(prompt: str, got: str) -> bool:
    """Whether ``got`` is a summary the agent accepts after this prompt's snippets."""
    try:
        parse_summary(got.strip(), {int(n) for n in _SHOWN.findall(_context(prompt, "copy"))})
    except ParseError:
        return False
    return True


def right(skill: str, prompt: str, gold: str, got: str) -> bool:
    """Whether ``got`` does what the demonstrated completion ``gold`` does (see the module doc)."""
    if skill == "answer":
        return _CITATION.sub("", got).strip() == _CITATION.sub("", gold).strip()
    if skill == "copy" and not _parses_as_note(prompt, got):
        return False
    names = _names(got)
    return bool(names) and names <= _names(_context(prompt, skill)) and _names(gold) <= names


def measure(model, tokenizer, probes: dict[str, list[SFTExample]]) -> dict[str, float]:
    """Per skill, the share of its probe steps whose greedy completion is right (``right``)."""
    scores = {}
    for skill, exs in probes.items():
        if exs:
            got = greedy_lines(model, tokenizer, [ex.prompt for ex in exs], MAX_NEW_TOKENS[skill])
            ok = sum(right(skill, ex.prompt, ex.completion, g) for ex, g in zip(exs, got, strict=True))
            scores[skill] = round(ok / len(exs), 4)
    return scores

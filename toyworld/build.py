"""Build a toy world's data files: the target world's corpus and question splits, plus auxiliary worlds.

Layout written under ``out_dir``::

    corpus.jsonl.gz                  target world passages {"id", "title", "text"}
    questions/{train,dev,test}.jsonl target questions (records: see toyworld.questions)
    aux/<i>/corpus.jsonl.gz          auxiliary world i (i = 0 .. n_aux-1): same schema and pools,
    aux/<i>/questions.jsonl          other entities and facts; the base models train on these
    manifest.json                    seeds, sizes, counts, template histograms

Everything is a pure function of ``seed`` and ``size``: files are byte-identical
across runs (gzip with mtime 0 and no file name, fixed key order).

Split disjointness (test vs train, dev vs train; in fact all three pairwise): the
world's regions (see ``toyworld.graph``) are shuffled and dealt to the splits
(30% test, 10% dev, the rest train). A question joins split S only if every
subject of its gold facts lies in a region S owns; questions that straddle splits
are dropped. A fact has exactly one subject, so no fact can be a gold fact of two
splits. Auxiliary worlds are built with ``avoid`` = the target world's triples, so
no ``(subject name, relation, object)`` triple of the target world holds in them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from core.io import parse_object
from toyworld.graph import World, WorldSize, make_world
from toyworld.questions import Draft, balanced_sample, generate_questions
from toyworld.render import Corpus, render_world

SPLITS: tuple[str, ...] = ("train", "dev", "test")
#: share of the world's regions each split owns (train gets what is left)
REGION_SHARE: dict[str, float] = {"test": 0.3, "dev": 0.1}


def aux_seed(seed: int, i: int) -> int:
    """Seed of auxiliary world ``i``, derived from the target seed (never equal to it in practice)."""
    return int(hashlib.sha256(f"toyworld-aux:{seed}:{i}".encode()).hexdigest()[:15], 16)


def split_regions(n_regions: int, seed: int) -> dict[str, list[int]]:
    """Deal the regions to the splits (see module doc); each split gets at least one."""
    if n_regions < len(SPLITS):
        raise ValueError(f"WorldSize.regions must be >= {len(SPLITS)} to make {len(SPLITS)} splits, got {n_regions}")
    order = list(range(n_regions))
    random.Random(f"splits:{seed}").shuffle(order)
    n_test = max(1, round(n_regions * REGION_SHARE["test"]))
    n_dev = max(1, round(n_regions * REGION_SHARE["dev"]))
    n_test = min(n_test, n_regions - n_dev - 1)
    return {"test": sorted(order[:n_test]), "dev": sorted(order[n_test:n_test + n_dev]),
            "train": sorted(order[n_test + n_dev:])}


def assign_splits(world: World, drafts: list[Draft], regions: dict[str, list[int]]) -> dict[str, list[Draft]]:
    """Each draft goes to the split owning all its fact subjects' regions, or nowhere."""
    owner = {r: split for split, rs in regions.items() for r in rs}
    out: dict[str, list[Draft]] = {s: [] for s in SPLITS}
    for d in drafts:
        splits = {owner[world.entities[s].region] for s in d.subjects}
        if len(splits) == 1:
            out[splits.pop()].append(d)
    return out


def build_world_data(out_dir: str | os.PathLike, seed: int, size: WorldSize | None = None,
                     n_aux: int = 2) -> dict:
    """Write the target world, its question splits and ``n_aux`` auxiliary worlds; return the manifest."""
    if isinstance(n_aux, bool) or not isinstance(n_aux, int) or n_aux < 0:
        raise ValueError(f"n_aux must be a non-negative integer, got {n_aux!r}")
    size = size or WorldSize()
    out = Path(out_dir)
    world = make_world(seed, size)
    corpus = render_world(world)
    regions = split_regions(size.regions, seed)
    pools = assign_splits(world, generate_questions(world, corpus), regions)
    rng = random.Random(f"select:{seed}")
    wanted = {"train": size.n_train, "dev": size.n_dev, "test": size.n_test}
    manifest: dict = {"seed": seed, "size": asdict(size), "split_regions": regions,
                      "target": _world_stats(world, corpus), "questions": {}, "templates": {},
                      "eligible": {s: len(pools[s]) for s in SPLITS}}
    write_corpus(out / "corpus.jsonl.gz", corpus)
    for split in SPLITS:
        chosen = balanced_sample(pools[split], wanted[split], rng)
        records = _with_ids(split, chosen)
        write_jsonl(out / "questions" / f"{split}.jsonl", records)
        manifest["questions"][split] = len(records)
        manifest["templates"][split] = _histogram(records)

    target_triples = world.triples()
    manifest["aux"] = []
    for i in range(n_aux):
        a_seed = aux_seed(seed, i)
        aux = make_world(a_seed, size, avoid=target_triples)
        aux_corpus = render_world(aux)
        drafts = generate_questions(aux, aux_corpus)
        records = _with_ids(f"aux{i}", balanced_sample(drafts, len(drafts), random.Random(f"select:{a_seed}")))
        write_corpus(out / "aux" / str(i) / "corpus.jsonl.gz", aux_corpus)
        write_jsonl(out / "aux" / str(i) / "questions.jsonl", records)
        manifest["aux"].append({"seed": a_seed, **_world_stats(aux, aux_corpus), "questions": len(records),
                                "templates": _histogram(records)})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _with_ids(prefix: str, drafts: list[Draft]) -> list[dict]:
    return [{"id": f"{prefix}-{i:05d}", **d.record} for i, d in enumerate(drafts)]


def _histogram(records: list[dict]) -> dict[str, int]:
    return dict(sorted(Counter(r["template"] for r in records).items()))


def _world_stats(world: World, corpus: Corpus) -> dict:
    types = Counter(e.type for e in world.entities.values())
    return {"passages": len(corpus.passages), "entities": dict(sorted(types.items())), "facts": len(world.facts),
            "relations": dict(sorted(Counter(f.relation for f in world.facts).items()))}


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_corpus(path: Path, corpus: Corpus) -> None:
    """gzip with mtime 0 and no embedded file name, so the bytes depend on the content only."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(_jsonl_bytes(corpus.passages))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jsonl_bytes(rows))


# -- readers

def _lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
        if line.strip():
            yield lineno, line


def _parse(path: str | os.PathLike, lineno: int, line: str, keys: tuple[str, ...]) -> dict:
    row = parse_object(line, f"{path}:{lineno}")
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{path}:{lineno}: missing key(s) {', '.join(missing)}")
    return row


def iter_corpus(path: str | os.PathLike) -> Iterator[dict]:
    """Passages ``{"id", "title", "text"}`` of a JSONL or JSONL.gz corpus, in file order."""
    for lineno, line in _lines(path):
        yield _parse(path, lineno, line, ("id", "title", "text"))


def load_questions(path: str | os.PathLike) -> list[dict]:
    """All question records of a JSONL file; each has at least ``id``, ``question`` and ``answers``."""
    rows = []
    for lineno, line in _lines(path):
        row = _parse(path, lineno, line, ("id", "question", "answers"))
        if not isinstance(row["answers"], list) or not all(isinstance(a, str) for a in row["answers"]):
            raise ValueError(f"{path}:{lineno}: 'answers' must be a list of strings")
        rows.append(row)
    return rows

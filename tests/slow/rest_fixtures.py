"""Shared set-up of the ReST slow tests: the tiny toy world, and ``--set`` overrides of the smoke config.

``configs/smoke_rest.yaml`` runs on the tiny world's own L-warm, as the README shows it:
the tiny recipe ends each base with a finishing run on the world's demonstration steps
(``toyworld.world.FINISH_TINY``), so its rollouts parse and a ReST generation stores
real training records. The world is built on first use (a few minutes, once, cached
under ``.cache/worlds/tiny-0``; a world of an older recipe is rebuilt).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORLD = ROOT / ".cache" / "worlds" / "tiny-0"
SMOKE = ROOT / "configs" / "smoke_rest.yaml"
#: name words of the learner tests' step examples
NAMES = "Ada Bela Cyro Dara Emil Fenna Gus Hale Ivo Juna Kato Lise Milo Nora Otto Pia".split()
#: the learner tests' tiny Llama (``toyworld.modelzoo.init_model`` fields; 64 wide, 2 layers)
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,  # the agent's few-shot prompts are long in a 320-token BPE
    "tie_word_embeddings": True,
}


def step_examples(n: int, seed: int, filler: bool = False):
    """Decision-step examples naming people; with ``filler`` the prompts vary in length (0-10 extra names)."""
    from learner.data import SFTExample

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.sample(NAMES, 3)
        extra = (" " + " ".join(rng.choices(NAMES, k=rng.randint(0, 10)))) if filler else ""
        out.append(SFTExample(f'question = "Who taught {a} {b}?"{extra}\naction = ', f'Search("{c} {a}")\n'))
    return out


def ensure_world() -> Path:
    from core.config import load_config
    from toyworld.world import ensure_world as build

    return build(load_config(SMOKE).world)


def warm_policy() -> Path:
    """The tiny world's L-warm, the smoke config's policy (the world built first if need be)."""
    return ensure_world() / "models" / "L-warm"


def overrides(**sets: object) -> list[str]:
    """``--set`` overrides ``KEY=VALUE`` for the smoke config (a value that is not a string as JSON)."""
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sets.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def serve_search(corpus: Path, port: int, cache: Path) -> subprocess.Popen:
    """``rest-react serve-search`` over ``corpus`` on ``port``, returned once it says it is serving."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rest", "serve-search", "--corpus", str(corpus), "--port", str(port),
         "--cache-dir", str(cache)], cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(180, proc.kill)
    watchdog.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("serving"):
                return proc
    finally:
        watchdog.cancel()
    raise AssertionError("serve-search did not start: " + "".join(seen)[-2000:])

"""Shared set-up of the ReST slow tests: the tiny toy world and a policy that emits parseable steps.

The tiny world's bases are trained for seconds and almost never produce a parseable
step, so a ReST generation over them stores no examples. ``smoke_policy`` trains the
tiny world's L-base a little further on the world's own demonstration steps (about a
minute, once, cached next to the world) so rollouts yield real training records. It
is written atomically, so concurrent or interrupted test sessions never see half a model.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORLD = ROOT / ".cache" / "worlds" / "tiny-0"
POLICY = ROOT / ".cache" / "worlds" / "tiny-0-smoke-policy"
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


def smoke_policy(steps: int = 150) -> Path:
    """The tiny world's L-base fine-tuned on its demonstration steps (cached)."""
    if (POLICY / "config.json").is_file():
        return POLICY
    import torch

    from agent.trajectory import Trajectory
    from learner.selection import to_example
    from learner.trainer import TrainConfig, train
    from rest.batch import step_records

    torch.set_num_threads(1)
    world = ensure_world()
    examples = []
    for path in sorted((world / "demos").glob("aux*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                traj = Trajectory.from_dict(json.loads(line)["trajectory"])
                examples += [to_example(r) for r in step_records(1, traj)]
    cfg = TrainConfig(max_steps=steps, lr=3e-3, batch_size=16, warmup_steps=10, max_len=320, seed=0)
    train(str(world / "models" / "L-base"), None, examples, cfg, out_dir=str(POLICY), progress=False)
    return POLICY


def smoke_overrides(policy: Path, **extra: object) -> list[str]:
    """``--set`` overrides for the smoke ReST config with ``policy`` as L."""
    sets = [f"models.policy={policy}"]
    sets += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in extra.items()]
    return sets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}

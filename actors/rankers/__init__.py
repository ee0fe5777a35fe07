"""AI feedback: the ranker kinds that score the K samples of every LLM step, and their factory.

``critic`` (label-free, the default), ``llm-judge`` (the paper's ranking prompt through an
engine), ``oracle`` (gold facts, the toy world's ablation ceiling) and ``random`` (the
control) implement ``actors.rankers.base.StepRanker``. Which sample then trains is
decided in ``learner.selection``; ``actors.rankers.actor`` runs a ranker over whole
trajectories as a Ray actor.
"""

from __future__ import annotations

from collections.abc import Mapping

from actors.engines import chat_format, make_engine
from actors.rankers.base import StepRanker
from actors.rankers.critic import Critic
from actors.rankers.llm_judge import LLMJudge
from actors.rankers.oracle import OracleRanker
from actors.rankers.random import RandomRanker
from core.config import EngineConfig, RankerConfig
from core.engine import Engine


def make_ranker(cfg: RankerConfig, engine: Engine | None = None, revisions: Mapping[str, str] | None = None,
                engine_cfg: EngineConfig | None = None) -> StepRanker:
    """The ranker ``cfg.kind`` names; ``llm-judge`` uses ``engine`` or builds one from ``cfg.judge_*`` and the
    run's engine section ``engine_cfg`` (a hub id at the commit ``revisions``, the run's ``models.revisions``,
    records for it), and talks to it in the judge model's chat template where it has one."""
    if cfg.kind == "critic":
        return Critic()
    if cfg.kind == "random":
        return RandomRanker(cfg.seed)
    if cfg.kind == "oracle":
        return OracleRanker()
    if cfg.kind == "llm-judge":
        if engine is None:
            if not cfg.judge_model:
                raise ValueError("ranker.judge_model is empty: the llm-judge ranker needs a judge model")
            revision = (revisions or {}).get(cfg.judge_model)
            engine_cfg = (engine_cfg or EngineConfig()).serving(cfg.judge_model, cfg.judge_backend)
            engine = make_engine(engine_cfg, revision=revision)
        chat = chat_format(getattr(engine, "tokenizer", None))  # the tokenizer the engine already loaded
        return LLMJudge(engine, max_new_tokens=cfg.judge_max_new_tokens, chat=chat, seed=cfg.seed)
    raise ValueError(f"ranker.kind: unknown ranker {cfg.kind!r} (known: critic, llm-judge, oracle, random)")


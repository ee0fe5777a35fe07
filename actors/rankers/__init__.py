"""The four rankers behind ``actors.ranker.StepRanker``: critic, llm-judge, oracle, random."""

from actors.rankers.critic import WEIGHTS, Critic
from actors.rankers.llm_judge import LLMJudge
from actors.rankers.oracle import OracleRanker
from actors.rankers.random import RandomRanker

__all__ = ["WEIGHTS", "Critic", "LLMJudge", "OracleRanker", "RandomRanker"]

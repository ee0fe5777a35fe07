"""Inference engines behind one interface (see ``base.Engine``)."""

from actors.engines.base import Engine, EngineError

__all__ = ["Engine", "EngineError"]

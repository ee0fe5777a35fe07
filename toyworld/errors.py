"""The toy world's own failure, importable without torch or the search backends (the CLI catches it)."""


class SkillGateError(RuntimeError):
    """A base ended its training without a skill its gate asks for (one line: model, skill, accuracy)."""

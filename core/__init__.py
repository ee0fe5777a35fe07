"""The bottom layer every other package builds on; it imports nothing of the project.

config (typed config dataclasses and the YAML loader), io (JSON Lines, atomic writes),
errors (one-line error text), seeds (seed derivation), engine and search (the two
protocols the agent runs against, with the records they return), hub (model ids to
local directories).
"""

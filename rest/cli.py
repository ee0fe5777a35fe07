"""The ``rest-react`` command line (DESIGN section 4).

Each subcommand is a small function that loads and validates its config, then calls
library code. A config problem is one line on stderr and exit code 2, never a
traceback; any other expected failure (a dead search server, a missing model) is one
line and exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from actors.engines import EngineError
from actors.search import SearchError
from rest.config import Config, ConfigError, load_config

EXIT_CONFIG = 2


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, help="YAML config file (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set agent.k_samples=8",
    )


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def cmd_episode(args: argparse.Namespace) -> int:
    """Run one traced episode and print every step."""
    from agent.runner import EpisodeRunner
    from agent.trace import format_trajectory
    from agent.trajectory import Question
    from rest.resources import build_engine, build_search

    cfg = _config(args)
    engine = build_engine(cfg)
    search = None if args.closed_book else build_search(cfg)
    runner = EpisodeRunner(engine, search, cfg.agent)
    (traj,) = runner.run([Question(id="cli", question=args.question)])
    print(format_trajectory(traj))
    return 0


def cmd_serve_search(args: argparse.Namespace) -> int:
    """Serve BM25 over a corpus on the Search-R1 retriever API."""
    from actors.search.server import serve_search_main

    if not os.path.isfile(args.corpus):
        raise ConfigError(f"--corpus: file not found: {args.corpus}")
    return serve_search_main(args.corpus, args.host, args.port, args.cache_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rest-react", description="ReST meets ReAct: self-improving search agents on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("episode", help="run one traced episode and print it")
    _add_config_args(p)
    p.add_argument("--question", required=True, help="the question to answer")
    p.add_argument("--closed-book", action="store_true", help="answer without the search tool")
    p.set_defaults(func=cmd_episode)

    p = sub.add_parser("serve-search", help="serve BM25 over a corpus on the Search-R1 /retrieve API")
    p.add_argument("--corpus", required=True, help="JSONL or JSONL.gz passages {id,title,text}")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--cache-dir", default=".cache/bm25", help="where the BM25 index is cached")
    p.set_defaults(func=cmd_serve_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (SearchError, EngineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

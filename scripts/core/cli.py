"""Conventions of every tool: a user error is one ``error:`` line and exit status 2."""
from __future__ import annotations

import sys
from typing import Callable, List, Optional

EXIT_USER_ERROR = 2


class ScriptError(RuntimeError):
    """A user error (bad path, unknown model, bad option value): reported in one line."""


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def run(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]] = None) -> int:
    """``main(argv)`` with :class:`ScriptError` (and the project's own user errors) as one line on stderr."""
    from config import ConfigError
    from models import ModelConfigError
    from utils.checkpoint import CheckpointError
    try:
        return main(argv)
    except (ScriptError, ConfigError, ModelConfigError, CheckpointError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR

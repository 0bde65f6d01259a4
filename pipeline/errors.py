"""How errors reach a user: one line with the cause and the fix, no traceback unless --debug.

``ValueError`` (bad input: config, arguments, corpus files) exits 2; ``RuntimeError`` (broken
on-disk state, a failed model) exits 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

USER_ERROR = 2
STATE_ERROR = 1
DEBUG = {"on": False}


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def user_errors(func: F) -> F:
    """Turn ValueError / RuntimeError raised by a command into a one-line message and exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ValueError, RuntimeError) as e:
            if DEBUG["on"]:
                raise
            code = USER_ERROR if isinstance(e, ValueError) else STATE_ERROR
            print(f"error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(code) from None

    return wrapper  # type: ignore[return-value]

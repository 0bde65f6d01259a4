"""How errors reach a user: one line with the cause and the fix, no traceback unless --debug.

``ValueError`` (bad input: config, arguments, corpus files) exits 2; ``RuntimeError`` (broken
on-disk state, a failed model) and ``OSError`` (a full or read-only disk met mid-run) exit 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
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


def disk_error_line(e: OSError) -> str:
    """One line naming the path and the fix of an ``OSError`` no check caught earlier."""
    where = f" {e.filename}" if e.filename else ""
    fixes = {
        errno.ENOSPC: "free space on that disk or point cache_dir/runs_dir at another one",
        errno.EDQUOT: "free space on that disk or point cache_dir/runs_dir at another one",
        errno.EACCES: "fix its permissions or point cache_dir/runs_dir at a writable folder",
        errno.EPERM: "fix its permissions or point cache_dir/runs_dir at a writable folder",
        errno.EROFS: "the file system is read-only: point cache_dir/runs_dir at a writable folder",
    }
    fix = fixes.get(e.errno or 0, "check the path and rerun (--debug shows the traceback)")
    return f"cannot access{where}: {e.strerror or e}: {fix}"


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
        except OSError as e:  # the disk, not the code: a full or read-only folder met mid-run
            if DEBUG["on"]:
                raise
            print(f"error: {disk_error_line(e)}", file=sys.stderr)
            raise SystemExit(STATE_ERROR) from None

    return wrapper  # type: ignore[return-value]

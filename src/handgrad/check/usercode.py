"""Running a stranger's code: whatever it raises (``sys.exit`` included) becomes one line that
names the user's file and line, never a traceback and never an exit of the checker."""

from __future__ import annotations

import linecache
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

import torch

T = TypeVar("T")

# Frames in these folders are the machinery around the user's code, not the user's code.
_LIBRARY_DIRS = tuple(
    str(Path(p).resolve())
    for p in {
        str(Path(__file__).parents[1]),  # handgrad itself
        str(Path(torch.__file__).parent),
        sysconfig.get_paths()["stdlib"],
    }
)


class UserCodeError(Exception):
    """The user's code raised during ``stage`` ("forward", "backward", "importing it", ...).

    ``where`` is ``file.py:LINE`` of the innermost frame in the user's own code, ``line`` that
    line's source, ``cause`` the original exception.
    """

    def __init__(self, stage: str, cause: BaseException) -> None:
        self.stage, self.cause = stage, cause
        self.where, self.line = user_frame(cause.__traceback__)
        if isinstance(cause, SystemExit):
            what = f"called sys.exit({cause.code!r})"
        else:
            first = (str(cause).strip().splitlines() or [""])[0]
            what = f"raised {type(cause).__name__}" + (f": {first}" if first else "")
        at = f" at {self.where}" if self.where else ""
        code = f" (`{self.line}`)" if self.line else ""
        super().__init__(f"{stage} {what}{at}{code}")


def call_user(stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; anything it raises but Ctrl-C becomes a :class:`UserCodeError`."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a layer must not end the checker
        raise UserCodeError(stage, exc) from exc


def user_frame(tb: TracebackType | None) -> tuple[str | None, str | None]:
    """(``file.py:LINE``, source line) of the innermost frame outside handgrad, torch and the
    standard library; ``(None, None)`` when every frame is library code."""
    frame = _innermost_own(tb)
    if frame is None:
        return None, None
    code, lineno = frame.f_code, frame.f_lineno
    line = linecache.getline(code.co_filename, lineno).strip()
    return f"{Path(code.co_filename).name}:{lineno}", line or None


def resolve(tb: TracebackType | None, expression: str) -> Any:
    """The object a dotted name (``self.w``, ``a``) of the user's raising line stands for, from
    that frame's variables; ``None`` when it cannot be found. Nothing is evaluated."""
    frame = _innermost_own(tb)
    if frame is None:
        return None
    head, *rest = expression.split(".")
    scope = {**frame.f_globals, **frame.f_locals}
    if head not in scope:
        return None
    obj = scope[head]
    for attr in rest:
        obj = vars(obj).get(attr) if hasattr(obj, "__dict__") else None
        if obj is None:
            return None
    return obj


def _innermost_own(tb: TracebackType | None) -> FrameType | None:
    own = None
    while tb is not None:
        if not _is_library(tb.tb_frame.f_code.co_filename):
            own = tb.tb_frame
        tb = tb.tb_next
    return own


def _is_library(filename: str) -> bool:
    try:
        path = str(Path(filename).resolve())
    except (OSError, RuntimeError):
        return False
    return path.startswith(_LIBRARY_DIRS) or "site-packages" in path

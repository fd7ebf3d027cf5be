"""Choosing between the native (C) and python backends."""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Dict, Optional

CHOICES = ("auto", "native", "python")
ENV = "FASTSHM_BACKEND"

_loaded: Dict[str, ModuleType] = {}


def _import(name: str) -> ModuleType:
    if name not in _loaded:
        if name == "native":
            from . import _native

            _loaded[name] = _native
        else:
            from . import _pure

            _loaded[name] = _pure
    return _loaded[name]


def native_error() -> Optional[str]:
    """Why the native backend cannot be imported, or None when it can."""
    try:
        _import("native")
    except ImportError as e:
        return str(e)
    return None


def resolve(choice: Optional[str]) -> ModuleType:
    """The backend module for ``choice`` (None: the process default)."""
    if choice is None:
        return _default
    if choice not in CHOICES:
        raise ValueError(f"backend must be one of {', '.join(CHOICES)}; got {choice!r}")
    if choice == "auto":
        return _default if _default_choice == "auto" else _auto()
    if choice == "native":
        try:
            return _import("native")
        except ImportError as e:
            raise ImportError(
                "fastshm's native backend is not available: its C extension "
                f"failed to import ({e}); reinstall fastshm with a C compiler "
                "present, or choose backend='python'"
            ) from e
    return _import("python")


def _auto() -> ModuleType:
    try:
        return _import("native")
    except ImportError as e:
        warnings.warn(
            f"fastshm: the C extension is not available ({e}); using the slower "
            f"pure-Python backend. Set {ENV}=python to choose it explicitly.",
            RuntimeWarning,
            stacklevel=3,
        )
        return _import("python")


_default_choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
if _default_choice not in CHOICES:
    raise ImportError(
        f"{ENV}={os.environ.get(ENV)!r} is not a fastshm backend; "
        f"use one of {', '.join(CHOICES)}"
    )
_default: ModuleType = _auto() if _default_choice == "auto" else resolve(_default_choice)

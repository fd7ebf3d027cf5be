"""Choosing between the native (C) and python backends.

The native backend has two bindings over the same C core: ``capi``, a
CPython extension written against the C API (the fast one on CPython), and
``cffi`` (PyPy's fast path, and the fallback where the C-API module is not
built).  ``"native"`` takes the first of them that imports;
``"native-capi"`` and ``"native-cffi"`` ask for one.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Dict, Optional

CHOICES = ("auto", "native", "python", "native-capi", "native-cffi")
ENV = "FASTSHM_BACKEND"

_loaded: Dict[str, ModuleType] = {}
# Why a binding failed to import, kept so that later calls do not retry (and
# pay for) the import each time.
_failed: Dict[str, str] = {}


def _import(binding: str) -> ModuleType:
    """The module of ``binding``: "capi", "cffi" or "python"."""
    if binding not in _loaded:
        if binding in _failed:
            raise ImportError(_failed[binding])
        try:
            if binding == "capi":
                from . import _capi as module
            elif binding == "cffi":
                from . import _native as module  # type: ignore[no-redef]
            else:
                from . import _pure as module  # type: ignore[no-redef]
        except ImportError as e:
            _failed[binding] = str(e)
            raise
        _loaded[binding] = module
    return _loaded[binding]


def _native() -> ModuleType:
    """The best native binding that imports: capi, else cffi."""
    try:
        return _import("capi")
    except ImportError:
        return _import("cffi")


def native_error() -> Optional[str]:
    """Why the native backend cannot be imported, or None when it can."""
    try:
        _native()
    except ImportError as e:
        return str(e)
    return None


def capi_error() -> Optional[str]:
    """Why the C-API binding cannot be imported, or None when it can."""
    try:
        _import("capi")
    except ImportError as e:
        return str(e)
    return None


def resolve(choice: Optional[str]) -> ModuleType:
    """The backend module for ``choice`` (None: the process default, from
    FASTSHM_BACKEND; a bad value there is reported here, at first use)."""
    if choice is None:
        return default()
    if choice not in CHOICES:
        raise ValueError(f"backend must be one of {', '.join(CHOICES)}; got {choice!r}")
    if choice == "auto":
        return _auto()
    if choice == "python":
        return _import("python")
    try:
        if choice == "native-capi":
            return _import("capi")
        if choice == "native-cffi":
            return _import("cffi")
        return _native()
    except ImportError as e:
        raise ImportError(
            f"fastshm's {choice} backend is not available: its C extension "
            f"failed to import ({e}); reinstall fastshm with a C compiler "
            "present, or choose backend='python'"
        ) from e


def _auto() -> ModuleType:
    try:
        return _native()
    except ImportError as e:
        warnings.warn(
            f"fastshm: the C extension is not available ({e}); using the slower "
            f"pure-Python backend. Set {ENV}=python to choose it explicitly.",
            RuntimeWarning,
            stacklevel=4,
        )
        return _import("python")


_default: Optional[ModuleType] = None


def default() -> ModuleType:
    """The process default backend, chosen once, on first use."""
    global _default
    if _default is None:
        raw = os.environ.get(ENV, "")
        choice = raw.strip().lower() or "auto"
        if choice not in CHOICES:
            raise ValueError(
                f"{ENV}={raw!r} is not a fastshm backend; use one of "
                f"{', '.join(CHOICES)} (or pass backend= / --backend explicitly)"
            )
        _default = resolve(choice)
    return _default

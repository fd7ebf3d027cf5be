"""Segment names of one run, and the sweep that proves nothing is left."""

from __future__ import annotations

import itertools
import os
import sys

SHM_DIR = "/dev/shm"


class Names:
    """Names unique to this run: ``fshmbench_<pid>_<n><tag>``."""

    def __init__(self) -> None:
        self.prefix = f"fshmbench_{os.getpid()}_"
        self._count = itertools.count()

    def new(self, tag: str = "") -> str:
        return f"{self.prefix}{next(self._count)}{tag}"

    def leftovers(self) -> list:
        if not os.path.isdir(SHM_DIR):
            return []
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(self.prefix))

    def sweep(self, quiet: bool = True) -> list:
        """Unlink whatever of this run is still in /dev/shm; returns it."""
        left = self.leftovers()
        for name in left:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                pass
        if left and not quiet:
            sys.stderr.write(f"benchmarks: removed leftover segments {left}\n")
        return left


def iceoryx2_entries() -> set:
    """iceoryx2's own files in /dev/shm (it names them itself)."""
    if not os.path.isdir(SHM_DIR):
        return set()
    return {n for n in os.listdir(SHM_DIR) if n.startswith("iox2_")}


def sweep_new_iceoryx2(before: set) -> list:
    """Remove the iceoryx2 files that appeared during this run (they were
    made by its nodes here); the ones that were there before stay."""
    new = sorted(iceoryx2_entries() - before)
    for name in new:
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass
    return new

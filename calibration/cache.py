"""Derived data kept between processes in a cache folder: what every cold `stripread read` would
otherwise rebuild (the pad models' optimised graph, the card's name as OpenCV draws it).

Each entry is named by a digest of everything it is computed from, so a stale one is never read.
Entries are written whole (a temporary file, then a rename: two processes at once each write
their own and one wins); one that cannot be written or read costs only its saving.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from calibration.digest import sha256


def cache_dir() -> Path:
    """$STRIPREAD_CACHE, else $XDG_CACHE_HOME/stripread, else ~/.cache/stripread (the service's home
    is its data folder, /var/lib/stripread, the one place it may write)."""
    configured = os.environ.get("STRIPREAD_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stripread"


def entry(name: str, key: bytes, suffix: str) -> Path:
    """The cache file for `name` computed from `key` (every input, as bytes)."""
    return cache_dir() / f"{name}-{sha256(key).hexdigest()[:20]}{suffix}"


def partial(path: Path) -> Path:
    """A temporary name beside `path`, this writer's own."""
    return path.with_name(f"{path.name}.{os.urandom(4).hex()}.tmp")


def remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def cached_array(name: str, key: bytes, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """compute(), or what it returned for the same key before (an .npy file; one that cannot be
    read is computed again and replaced)."""
    path = entry(name, key, ".npy")
    with contextlib.suppress(OSError, ValueError, EOFError):
        return np.load(path, allow_pickle=False)
    value = compute()
    temporary = partial(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as out:
            np.save(out, value, allow_pickle=False)
        os.replace(temporary, path)
    except OSError:
        remove(temporary)
    return value

"""Prepared data as immutable, content-addressed directories: keys from settings and file contents, built under
a lock in a partial directory beside the target and renamed into place only when complete."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)


def describe(obj: object) -> dict[str, Any]:
    """An object's class and public attributes: what a reuse key needs to know about a configured component."""
    public = {k: v for k, v in vars(obj).items() if not k.startswith("_")}
    return {"kind": f"{type(obj).__module__}.{type(obj).__qualname__}", **public}


def key_of(fingerprint: Any) -> str:
    """A short stable hash of JSON-able settings."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def describe_files(paths: list[Path]) -> list[dict[str, Any]]:
    """Path, size and content hash of each file: reuse is decided by content, never by size or date alone."""
    return [{"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)} for path in paths]


def build_once(
    target: Path, lock_dir: Path, is_complete: Callable[[Path], bool], build: Callable[[Path], None]
) -> bool:
    """Make `target` complete, building it only when no process has: returns True when it was built here.

    Safe across processes (DDP ranks, concurrent runs): one builds under the lock, the others wait and reuse.
    The build writes into a partial directory beside the target (same filesystem, normal permissions) that is
    removed when the build fails, and renamed into place when it succeeds: a killed build leaves nothing that
    looks complete, and the next build removes what it left.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_dir / f"{key_of(str(target))}.lock"):
        if is_complete(target):
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.partial-*"):  # only a killed build leaves these
            shutil.rmtree(stale, ignore_errors=True)
        partial = target.parent / f".{target.name}.partial-{os.getpid()}"
        partial.mkdir()
        try:
            build(partial)
            partial.replace(target)  # target is absent or an empty directory
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        log.info("prepared %s", target)
        return True

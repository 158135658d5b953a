"""Files written whole or not at all: every file vit_explore writes (weights, reports, exported
HTML, the CLI's maps) goes to a temporary name in the same folder and is renamed into place with
``os.replace`` (atomic on POSIX and Windows) only once it is complete."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_bytes_atomically", "write_text_atomically"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path`` to write to; when the block ends without
    an error it replaces ``path``, otherwise it is removed and ``path`` is left as it was.
    The file gets the permissions its writer creates it with (the umask applies)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)

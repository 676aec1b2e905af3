"""All-or-nothing writes: every file and folder this project writes goes through a temporary
name in the same folder and an ``os.replace``, so a crash never leaves a half-written file,
and the result gets the permissions a plain ``open(..., "w")`` would give (``mkstemp`` and
``mkdtemp`` create owner-only files and folders)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Union

PathLike = Union[str, Path]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to (e.g. with safetensors' ``save_file``);
    on success it replaces ``path``, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: PathLike, data: Union[str, bytes]) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` all or nothing, flushed to disk."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())


@contextmanager
def atomic_dir(target: PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def jsonl_lines(path: PathLike) -> List[str]:
    """The lines of a UTF-8 JSON-lines file, split at ``\\n`` only. ``str.splitlines`` also
    splits at U+2028, U+0085 and other separators, which ``json.dumps(..., ensure_ascii=False)``
    leaves raw inside strings (a generated text can hold them), and would cut such a record in two."""
    return Path(path).read_text(encoding="utf-8").split("\n")

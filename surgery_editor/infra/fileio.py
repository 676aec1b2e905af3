"""All-or-nothing writes: every file and folder this project writes goes through a temporary
name in the same folder and an ``os.replace``, so a crash never leaves a half-written file,
and the result gets the permissions a plain ``open(..., "w")`` would give (``mkstemp`` and
``mkdtemp`` create owner-only files and folders).

Reading text: :func:`read_text` decodes UTF-8 (a leading byte-order mark is dropped) and
says which file is unreadable and why. :func:`check_writable_dir` finds an output folder
that cannot be written before any work is done."""

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
    return read_text(path).split("\n")


def decode_text(raw: bytes, source: PathLike) -> str:
    """``raw`` as UTF-8 text with a leading byte-order mark dropped, or a ``ValueError`` naming
    ``source`` and what is wrong (UTF-16 text, or the first byte that is not UTF-8)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{source}: UTF-16 text (it starts with a UTF-16 byte-order mark); save the file as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: not UTF-8 text ({err.reason} at byte {err.start}); "
                         "save the file as UTF-8") from None


def read_text(path: PathLike, what: str = "") -> str:
    """The text of a UTF-8 file (see :func:`decode_text`). Errors name the file (after ``what``,
    e.g. ``"hparams file"``) and say what is wrong: missing, a folder where a file is expected,
    unreadable, or not UTF-8."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise IsADirectoryError(f"{label}: is a folder, expected a file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{label}: no such file") from None
    except OSError as err:
        raise OSError(f"{label}: cannot be read ({err.strerror or err})") from err
    return decode_text(raw, label)


def check_writable_dir(path: PathLike, what: str) -> Path:
    """Make sure ``path`` is, or can be made, a folder this process can write, without creating
    it: no file is in its way, and a small file can be written (and is removed again) in it or,
    when it does not exist yet, in its nearest existing parent. Otherwise an ``OSError`` naming
    ``what`` (the setting, e.g. ``"hydra.run.dir"``), the folder and the reason (a file in the
    way, no permission, a read-only file system)."""
    path = Path(path).expanduser().absolute()
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{what}: {path} cannot be a folder: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-check.")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        where = "" if existing == path else f" (its parent {existing} is not writable)"
        raise OSError(f"{what}: {path} cannot be written{where}: {err.strerror or err}") from err
    return path

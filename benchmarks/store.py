"""A run's output folder: ``results.jsonl`` appended as items finish, ``metrics.json`` and the
resolved ``config.yaml`` written atomically (the working form; :mod:`benchmarks.rundir` reads it
and the compact form, which is read-only here).

``results.jsonl`` is append-only: each finished item is one line, written whole and flushed to
disk before the next chunk starts. A run killed mid-write can leave a partial last line (with or
without its newline); on restart an unreadable last line is dropped (the item is redone) and
everything before it is trusted, so a resumed run ends with exactly the lines an uninterrupted
one would have. An unreadable line before the last is an error. :class:`RunLock` keeps a second
run out of a folder that a live run is writing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

from .rundir import COMPACT, CONFIG, EXPAND_HINT, METRICS, RESULTS  # noqa: F401  (CONFIG: run)
from surgery_editor.infra.fileio import atomic_write as atomic_write_text  # noqa: F401  (re-exported: run, perf)

logger = logging.getLogger(__name__)


class CompactRunDir(RuntimeError):
    """The run directory holds a compact run (``run.jsonl.bz2``), which nothing appends to."""

    def __init__(self, run_dir: Union[str, Path], detail: str = ""):
        super().__init__(f"{run_dir} holds a compact run ({COMPACT}{detail}), which is read-only; to run it "
                         f"further, turn it back into the working form first: "
                         + EXPAND_HINT.format(dir=run_dir))


def stored_config(run_dir: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The resolved config a run dir's results were made with (its ``config.yaml``), as a
    nested dict; ``None`` when the dir has none. An unreadable one is an error naming it."""
    import yaml

    from surgery_editor.infra.fileio import read_text

    from .rundir import is_compact, read_run

    path = Path(run_dir) / CONFIG
    if is_compact(run_dir):  # the config text is in the compact file's header
        path = Path(run_dir) / "run.jsonl.bz2"
        text = read_run(run_dir).config
        if text is None:
            return None
    elif not path.exists():
        return None
    else:
        text = read_text(path)
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(config).__name__}")
    return config


class RunDirInUse(RuntimeError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run_dir>/.lock``, held from :meth:`acquire` to
    :meth:`release` (or a ``with`` block), so two runs never write one folder at once.

    Non-blocking: when another process holds it, :class:`RunDirInUse` names that process
    (its pid and start time, which it wrote into the lock file). The kernel drops the lock
    when its holder exits, however it dies, so a killed run's folder can be resumed at once.
    The lock file stays behind (removing it would race with a run that is just opening it);
    its content is informational only and is written in place, because the lock belongs to
    that file and an atomic replace would swap it for another one."""

    NAME = ".lock"

    def __init__(self, run_dir: Union[str, Path]):
        self.dir = Path(run_dir)
        self.path = self.dir / self.NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']}, started at {info['started']}"
            except (ValueError, KeyError, TypeError):
                who = "pid unknown"
            raise RunDirInUse(f"{self.dir} is in use by another run ({who}); wait for it or use another "
                              "hydra.run.dir (hydra.sweep.dir for a multirun)") from None
        stamp = json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class ResultStore:
    """The per-item results of one run, keyed by each item's ``key``."""

    def __init__(self, run_dir: Union[str, Path]):
        self.dir = Path(run_dir)
        if (self.dir / COMPACT).is_file():
            raise CompactRunDir(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / RESULTS
        self.rows: Dict[str, Dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good_end = 0
        lines = raw.splitlines(keepends=True)
        for lineno, line in enumerate(lines, 1):
            if not line.endswith(b"\n"):
                logger.warning("%s: dropping an incomplete last line (the run was interrupted while writing it)",
                               self.path)
                break
            try:
                row = json.loads(line)
            except ValueError as err:  # JSONDecodeError, or a multi-byte character cut in two
                if lineno == len(lines):
                    logger.warning("%s:%d: dropping an unreadable last line (%s); it is what a run killed while "
                                   "writing leaves, and its item is redone", self.path, lineno, err)
                    break
                raise ValueError(f"{self.path}:{lineno}: not valid JSON ({err}); this file is append-only, "
                                 "so an unreadable line other than the last means it was edited by hand") from err
            if not isinstance(row, dict) or "key" not in row:
                raise ValueError(f"{self.path}:{lineno}: a result line needs a 'key' field")
            self.rows[str(row["key"])] = row
            good_end += len(line)
        if good_end < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        if self.rows:
            logger.info("%s: resuming, %d items already done", self.path, len(self.rows))

    def __contains__(self, key: str) -> bool:
        return str(key) in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, rows: Iterable[Dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        with open(self.path, "a") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for row in rows:
            self.rows[str(row["key"])] = row

    def ordered(self, keys: Iterable[str]) -> List[Dict[str, Any]]:
        """The stored rows for ``keys``, in that order (every key must be done)."""
        missing = [k for k in keys if str(k) not in self.rows]
        if missing:
            raise KeyError(f"{self.path}: no results for items {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return [self.rows[str(k)] for k in keys]

    def write_metrics(self, metrics: Dict[str, Any]) -> Path:
        path = self.dir / METRICS
        atomic_write_text(path, json.dumps(metrics, indent=2, default=_jsonable) + "\n")
        return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)

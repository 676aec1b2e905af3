"""A run's output folder: ``results.jsonl`` appended as items finish, ``metrics.json`` and the
resolved ``config.yaml`` written atomically.

``results.jsonl`` is append-only: each finished item is one line, written whole and flushed to
disk before the next chunk starts. A run killed mid-write can leave a partial last line; on
restart that line is dropped (the item is redone) and everything before it is trusted, so a
resumed run ends with exactly the lines an uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Union

from surgery_editor.fileio import atomic_write as atomic_write_text  # noqa: F401  (re-exported: run, perf)

logger = logging.getLogger(__name__)

RESULTS = "results.jsonl"
METRICS = "metrics.json"
CONFIG = "config.yaml"


class ResultStore:
    """The per-item results of one run, keyed by each item's ``key``."""

    def __init__(self, run_dir: Union[str, Path]):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / RESULTS
        self.rows: Dict[str, Dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good_end = 0
        for lineno, line in enumerate(raw.splitlines(keepends=True), 1):
            if not line.endswith(b"\n"):
                logger.warning("%s: dropping an incomplete last line (the run was interrupted while writing it)",
                               self.path)
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
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

"""Checks of user-given values shared by the command line, the library and the benchmark
harness: each failure is an error naming the setting and what would be valid."""

from __future__ import annotations

import math
import numbers
from typing import Any, List, Mapping


def check_count(name: str, value: Any, allow_none: bool = True, what: str = "", none_means: str = "no limit") -> None:
    """``value`` must be a positive integer (or ``None`` where ``allow_none``); otherwise a
    ``ValueError`` naming the option (e.g. ``benchmark.limit``) and ``what`` it belongs to."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        valid = "a positive integer" + (f" or null (= {none_means})" if allow_none else "")
        got = f"the string {value!r}" if isinstance(value, str) else repr(value)
        raise ValueError(f"{name}{f' ({what})' if what else ''} must be {valid}, got {got}")


def non_finite(values: Any, prefix: str = "") -> List[str]:
    """The dotted keys of every NaN or infinite number in ``values`` (nested mappings and
    lists walked; lists by index)."""
    if isinstance(values, Mapping):
        return [k for key, v in values.items() for k in non_finite(v, f"{prefix}{key}.")]
    if isinstance(values, (list, tuple)):
        return [k for i, v in enumerate(values) for k in non_finite(v, f"{prefix}{i}.")]
    if isinstance(values, numbers.Real) and not math.isfinite(float(values)):
        return [prefix.rstrip(".")]
    return []

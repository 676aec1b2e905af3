"""Name -> object tables for the pluggable pieces (judges, benchmark methods, benchmarks):
registration that refuses a duplicate, and look-up whose error names the valid entries."""

from __future__ import annotations

import difflib
from typing import Dict, Iterable, Optional, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, options: Iterable[str]) -> Optional[str]:
    close = difflib.get_close_matches(name, list(options), n=1)
    return close[0] if close else None


def register(table: Dict[str, T], name: str, obj: T, kind: str) -> T:
    """``table[name] = obj``; a ``kind`` (e.g. ``"method"``) registered twice is an error."""
    if name in table:
        raise ValueError(f"{kind} {name!r} is already registered")
    table[name] = obj
    return obj


def lookup(table: Dict[str, T], name: str, kind: str) -> T:
    """``table[name]``, or a KeyError with a did-you-mean hint and the valid names."""
    if name not in table:
        close = did_you_mean(name, table)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise KeyError(f"unknown {kind} {name!r}{hint}; valid {kind}s: {sorted(table)}")
    return table[name]

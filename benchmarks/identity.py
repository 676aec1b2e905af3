"""Whether a run dir's results may be resumed by a run with other settings.

A run dir holds the results of one set of settings: its ``config.yaml`` (read through
:func:`benchmarks.store.stored_config`) says which. A run started on a dir that already holds
results resumes it only when every setting that can change an item's result is the same;
otherwise :func:`check_settings` refuses it with :class:`RunDirMismatch`, naming each setting
that differs with the stored and the new value, because the dir would end up with items made
under two settings and metrics that mix them.

Settings are compared as :func:`benchmarks.run.run_settings` gives them (the ``scale``
preset's values filled in, the judge's name and ``data_dir`` resolved), one entry per option
(:func:`setting_table`). What may differ:

- :data:`RESULT_NEUTRAL`: settings that change how items are computed, not what is computed:
  batch sizes, caches, the device (a device changes floating-point rounding only, as a batch
  size does), a judge's runtime options, Hydra's own settings;
- :data:`ITEM_LIMITS`: how many items a run has. A run's items must include every item the dir
  already holds (:func:`check_items`): a larger limit extends the run; a smaller one is refused
  (the dir would hold results that neither its ``config.yaml`` nor its ``metrics.json``
  describes).

A setting missing from an older ``config.yaml`` counts as its current default. Items whose
stored result rows carry other field values than the items now loaded (the data file changed
under the same path) are refused as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# dotted keys (or prefixes of them) whose values may differ between the runs filling one dir
RESULT_NEUTRAL = (
    "hydra",
    "generation.batch_size",
    "benchmark.batch_size",  # general: lm-eval's batch size
    "benchmark.share_prefix",  # safeedit: the same greedy tokens with fewer forward passes
    "benchmark.default_judge",  # compared as the effective `judge`
    "device",
    "hparams.cache_dir",
    "hparams.activation_batch_size",
    "hparams.batch_size",  # EasyEdit's requests per edit call; the harness passes one
    "hparams.model_parallel",
    "judge_kwargs.batch_size", "judge_kwargs.device", "judge_kwargs.progress", "judge_kwargs.qps",
    "judge_kwargs.max_retries", "judge_kwargs.timeout", "judge_kwargs.backoff_base", "judge_kwargs.backoff_max",
)
# settings that choose how many items a run has: checked through the items (check_items)
ITEM_LIMITS = ("benchmark.limit", "benchmark.limit_per_group", "benchmark.limit_per_task", "benchmark.limits")

Difference = Tuple[str, Any, Any]


class RunDirMismatch(ValueError):
    """A run's settings or items differ from those of the results already in its dir."""


GROUPS = ("benchmark", "generation", "method", "hparams", "model", "edit_instance")


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _strip(key: str, value: Any) -> Any:
    """``value`` less the :data:`RESULT_NEUTRAL` entries of a mapping (``judge_kwargs.device``)."""
    if isinstance(value, Mapping):
        return {k: _strip(f"{key}.{k}", v) for k, v in value.items() if not _under(f"{key}.{k}", RESULT_NEUTRAL)}
    return value


def setting_table(settings: Mapping[str, Any]) -> Dict[str, Any]:
    """One entry per setting: ``group.key`` for the config groups (:data:`GROUPS`), the
    top-level key otherwise; a mapping-valued setting (``judge_kwargs``, ``hparams.probe_data``)
    is one value, compared whole."""
    out: Dict[str, Any] = {}
    for key, value in settings.items():
        if key in GROUPS and isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return {k: _strip(k, v) for k, v in out.items()}


def differences(stored: Mapping[str, Any], current: Mapping[str, Any], defaults: Mapping[str, Any],
                keys: Sequence[str] = ()) -> List[Difference]:
    """``(setting, stored value, current value)`` for every setting (:func:`setting_table`)
    that differs, leaving out :data:`RESULT_NEUTRAL` and :data:`ITEM_LIMITS` (or, with
    ``keys``, comparing only those). A setting the stored config lacks (added since) is
    compared with its value in ``defaults``; one the current settings lack (removed since) is
    left out."""
    old, new, default = setting_table(stored), setting_table(current), setting_table(defaults)
    out = []
    for key in sorted(new):
        if keys and not _under(key, keys):
            continue
        if not keys and (_under(key, RESULT_NEUTRAL) or _under(key, ITEM_LIMITS)):
            continue
        before = old[key] if key in old else default.get(key)
        if before != new[key]:
            out.append((key, before, new[key]))
    return out


def _describe(diffs: Sequence[Difference]) -> str:
    return "; ".join(f"{key}: {old!r} there, {new!r} now" for key, old, new in diffs)


ADVICE = ("use another output dir (hydra.run.dir, or hydra.sweep.dir for a multirun), run with the dir's settings, "
          "or delete the dir to start over")


def check_settings(run_dir: Path, stored: Optional[Mapping[str, Any]], current: Mapping[str, Any],
                   defaults: Mapping[str, Any], n_results: int) -> None:
    """Refuse to resume ``run_dir`` (holding ``n_results`` results made with the ``stored``
    settings, ``None`` when it has no config) with the ``current`` settings when a setting that
    changes an item's result differs (see :func:`differences`)."""
    if stored is None:
        if n_results:
            raise RunDirMismatch(f"{run_dir}: holds {n_results} results but no config.yaml recording the settings "
                                 f"they were made with, so they cannot be checked against this run's; {ADVICE}")
        return
    diffs = differences(stored, current, defaults)
    if diffs:
        raise RunDirMismatch(f"{run_dir}: this run's settings differ from those of the results already there "
                             f"({run_dir / 'config.yaml'}), and resuming would mix results of both: "
                             f"{_describe(diffs)}. Batch sizes, the device, caches and a larger limit (which "
                             f"extends a run) may differ (benchmarks.identity.RESULT_NEUTRAL); otherwise {ADVICE}")


def check_items(run_dir: Path, rows: Mapping[str, Mapping[str, Any]], items: Sequence[Mapping[str, Any]],
                limit_changes: Sequence[Difference] = ()) -> None:
    """Refuse to resume when the dir holds results (``rows``, by key) for items this run does
    not have (a smaller limit, another data file: ``limit_changes`` are named), or when an item
    now loaded carries other field values than its stored result row (the data changed)."""
    keys = {str(it["key"]) for it in items}
    extra = [k for k in rows if k not in keys]
    if extra:
        why = (f"the item limits changed ({_describe(limit_changes)}); a run dir's items can only grow"
               if limit_changes else "its items are not among this run's (did the data file change?)")
        raise RunDirMismatch(f"{run_dir}: results.jsonl holds results for {len(extra)} item(s) this run does not have "
                             f"(keys {extra[:5]}{' ...' if len(extra) > 5 else ''}): {why}; {ADVICE}")
    changed = []
    for it in items:
        row = rows.get(str(it["key"]))
        if row is not None:
            fields = [f for f, v in it.items() if f in row and row[f] != v]
            if fields:
                changed.append(f"{it['key']!r} ({', '.join(fields)})")
    if changed:
        raise RunDirMismatch(f"{run_dir}: {len(changed)} item(s) differ from the ones their stored results were made "
                             f"from: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}; the data file "
                             f"changed since, so the stored results no longer belong to these items; {ADVICE}")


def check_resume(run_dir: Path, stored: Optional[Mapping[str, Any]], current: Mapping[str, Any],
                 defaults: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]],
                 items: Sequence[Mapping[str, Any]]) -> None:
    """:func:`check_settings`, then (when the dir has settings) :func:`check_items` naming the
    item limits that changed."""
    check_settings(run_dir, stored, current, defaults, len(rows))
    if stored is not None:
        check_items(run_dir, rows, items, differences(stored, current, defaults, keys=ITEM_LIMITS))

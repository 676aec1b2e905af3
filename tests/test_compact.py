"""The compact form of run dirs: conversion, reading, expansion, publishing, resume."""

from __future__ import annotations

import bz2
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks import compact, publish, rejudge, report, rundir
from benchmarks.rundir import COMPACT, SHARED, Run

from conftest import REPO
from test_benchmarks import _compose, _tiny_overrides, needs_data


def length_judge(texts):  # a stand-in judge: longer = more toxic
    return np.array([min(1.0, len(t) / 40) for t in texts])


def _files(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _snapshot(root: Path):
    return {name: (root / name).read_bytes() for name in _files(root)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir):
    """Two small finished runs made by benchmarks.run with the tiny model, in the working form, as
    a multirun leaves them (plus Hydra's bookkeeping written by hand)."""
    from benchmarks import run as run_mod

    if not (REPO.parent / "shared" / "data").exists():
        pytest.skip("offline data not found")
    root = tmp_path_factory.mktemp("made") / "sweep"
    for method in ("none", "prompt"):
        d = root / f"{method}_rtp"
        cfg = _compose(f"method={method}", "benchmark=rtp", "benchmark.limit=8", *_tiny_overrides(tiny_model_dir))
        run_mod.run(cfg, d)
        (d / ".hydra").mkdir()
        (d / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- benchmark=rtp\n")
        (d / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
        (d / "run.log").write_text("[INFO] ran\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def _report_and_rejudge(root: Path, out: Path):
    table = report.summary_table(report.collect(root))
    report.write_report(root, out / "report", plots=False)
    for run in report.find_run_dirs(root)[0]:
        rejudge.rejudge_run(run, out / "rejudged" / run.name, length_judge, "length")
    return table


@needs_data
def test_round_trip_keeps_report_paired_tests_and_rejudge_identical(sweep, tmp_path):
    root = tmp_path / "sweep"
    shutil.copytree(sweep, root)
    rows_before = {d.name: rundir.read_rows(d) for d in report.find_run_dirs(root)[0]}
    before = _report_and_rejudge(root, tmp_path / "before")
    assert "toxic_rate_p_vs_none" in before.columns  # a paired test was computed

    summary = compact.compact_tree(root)
    assert summary.count("compacted") == 2 and summary.count("refused") == 0
    assert _files(root) == ["none_rtp/run.jsonl.bz2", "prompt_rtp/run.jsonl.bz2", SHARED]
    assert {d.name: rundir.read_rows(d) for d in report.find_run_dirs(root)[0]} == rows_before
    after = _report_and_rejudge(root, tmp_path / "after")

    assert after.equals(before)
    assert _snapshot(tmp_path / "before") == _snapshot(tmp_path / "after")  # report.md/csv, rejudged runs
    header = json.loads(bz2.decompress((root / "prompt_rtp" / COMPACT).read_bytes()).decode().split("\n")[0])
    assert header["overrides"] == ["method=prompt", "benchmark=rtp"] and "benchmark:" in header["config"]
    assert header["metrics"] == json.loads((sweep / "prompt_rtp" / "metrics.json").read_text())


@needs_data
def test_compact_run_is_skipped_when_finished_and_refused_when_it_needs_more(sweep, tmp_path, tiny_model_dir,
                                                                              monkeypatch):
    from benchmarks import run as run_mod
    import surgery_editor.models

    root = tmp_path / "sweep"
    shutil.copytree(sweep, root)
    compact.compact_tree(root)
    files = _snapshot(root)
    monkeypatch.setattr(surgery_editor.models, "load_model",
                        lambda *a, **k: pytest.fail("a finished compact run loaded the model"))
    cfg = _compose("method=none", "benchmark=rtp", "benchmark.limit=8", *_tiny_overrides(tiny_model_dir))
    assert run_mod.run(cfg, root / "none_rtp") == json.loads((sweep / "none_rtp" / "metrics.json").read_text())
    assert _snapshot(root) == files  # nothing written, not even a lock file

    bigger = _compose("method=none", "benchmark=rtp", "benchmark.limit=10", *_tiny_overrides(tiny_model_dir))
    with pytest.raises(RuntimeError, match=r"8 of this run's 10 items.*python -m benchmarks\.compact --expand "):
        run_mod.run(bigger, root / "none_rtp")
    monkeypatch.undo()
    compact.expand_tree(root / "none_rtp")  # as the message says; then it resumes in the working form
    assert run_mod.run(bigger, root / "none_rtp")["n"] == 10
    assert len((root / "none_rtp" / "results.jsonl").read_text().splitlines()) == 10


def _sampled_rows(n, seed):
    rng = np.random.default_rng(seed)
    return [{"key": str(i), "prompt": f"prompt {i}\u2028with a line separator", "prompt_toxicity": 0.5,
             "generations": [f"text {i} {j} {rng.integers(3)}" for j in range(3)],
             "scores": rng.random(3).tolist(), "flags": {"toxicity_probability": bool(rng.integers(2))},
             "values": {"expected_max_toxicity": float(rng.random()), "mean_toxicity": math.nan}}
            for i in range(n)]


def _write_working(d: Path, metrics: dict, rows, config="seed: 0\n"):
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (d / "config.yaml").write_text(config)
    (d / "results.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                     encoding="utf-8")


def _metrics(method, benchmark="rtp", **extra):
    return {"method": method, "label": method, "model": "m", "benchmark": benchmark, "protocol": "sampled",
            "judge": "profanity", "n": 6, **extra}


def test_rows_that_differ_from_the_shared_rows_in_every_way_come_back_exactly(tmp_path):
    base = _sampled_rows(6, 0)
    other = json.loads(json.dumps(base))
    other[0]["flags"] = {"toxicity_probability": 1}              # 1, not true
    other[1]["values"] = dict(reversed(list(other[1]["values"].items())))  # same dict, other order
    del other[2]["prompt_toxicity"]                                # a field fewer
    other[3]["extra"] = [1, 2]                                     # a field more
    other[4] = {"prompt": other[4]["prompt"], "key": "4"}          # another field order
    other.append({"key": 99, "generations": ["only here"]})       # an item the reference lacks, an int key
    other.append(dict(other[5]))                                   # a repeated key
    _write_working(tmp_path / "f" / "a_none", _metrics("none"), base)
    _write_working(tmp_path / "f" / "b_other", _metrics("other"), other)
    _write_working(tmp_path / "f" / "c_safeedit", _metrics("none", "safeedit"), [{"key": "0", "x": 1}])
    compact.compact_tree(tmp_path / "f")

    run = rundir.read_run(tmp_path / "f" / "b_other")
    assert json.dumps(run.rows) == json.dumps(other)  # values and field order, NaN included
    assert run.config == "seed: 0\n" and run.metrics == _metrics("other")
    table = rundir.shared_rows(tmp_path / "f" / SHARED)
    assert list(table) == ["rtp|sampled|"]  # the lone safeedit run is stored whole, not shared
    assert rundir.read_rows(tmp_path / "f" / "c_safeedit") == [{"key": "0", "x": 1}]

    expected = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in other)
    source = _snapshot(tmp_path / "f")
    assert compact.main(["--expand", "--out", str(tmp_path / "copy"), str(tmp_path / "f")]) == 0
    assert _snapshot(tmp_path / "f") == source  # copies: the compact runs stay
    assert (tmp_path / "copy" / "b_other" / "results.jsonl").read_text(encoding="utf-8") == expected
    compact.expand_tree(tmp_path / "f")
    assert not (tmp_path / "f" / SHARED).exists()
    assert (tmp_path / "f" / "b_other" / "results.jsonl").read_text(encoding="utf-8") == expected


def test_conversion_is_idempotent_and_byte_for_byte_deterministic(tmp_path):
    for root in (tmp_path / "one", tmp_path / "two"):
        _write_working(root / "none_rtp", _metrics("none"), _sampled_rows(6, 0))
        _write_working(root / "x_rtp", _metrics("x"), _sampled_rows(6, 1))
        (root / "x_rtp" / ".lock").write_text("")
        assert compact.main([str(root)]) == 0
    first = _snapshot(tmp_path / "one")
    assert first == _snapshot(tmp_path / "two")
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "one").rglob("*")}
    summary = compact.compact_tree(tmp_path / "one")
    assert summary.count("compacted") == 0 and summary.count("unchanged") == 2
    assert _snapshot(tmp_path / "one") == first
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "one").rglob("*")} == mtimes

    # expanded and compacted again: the same bytes
    compact.expand_tree(tmp_path / "one")
    assert (tmp_path / "one" / "none_rtp" / "metrics.json").exists()
    compact.compact_tree(tmp_path / "one")
    assert _snapshot(tmp_path / "one") == first


def test_a_run_added_later_shares_rows_and_leaves_the_others_readable(tmp_path):
    root = tmp_path / "f"
    _write_working(root / "none_rtp", _metrics("none"), _sampled_rows(6, 0))
    compact.compact_tree(root)
    assert not (root / SHARED).exists()  # one run: stored whole
    _write_working(root / "x_rtp", _metrics("x"), _sampled_rows(8, 0))  # two more items
    summary = compact.compact_tree(root)
    assert {o.dir.name: o.action for o in summary.outcomes} == {"none_rtp": "rewritten", "x_rtp": "compacted"}
    assert rundir.read_rows(root / "none_rtp") == json.loads(json.dumps(_sampled_rows(6, 0)))
    assert len(rundir.read_rows(root / "x_rtp")) == 8
    shutil.rmtree(root / "none_rtp")  # removing the run whose rows seeded the shared ones
    assert len(rundir.read_rows(root / "x_rtp")) == 8


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "results.jsonl").write_text('{"key": "0"}\nnot json\n{"key": "2"}\n'),
     r"results\.jsonl:2: not valid JSON"),
    (lambda d: (d / "results.jsonl").write_text('{"key": "0"}\n{"key": "1", "sco'),
     r"results\.jsonl:2: not valid JSON .*fix or delete it"),
    (lambda d: (d / "metrics.json").write_text("[1, 2]"), r"metrics\.json: expected a JSON object, got list"),
    (lambda d: (d / "notes.txt").write_text("keep me"), r"holds notes\.txt, which the compact form does not keep"),
])
def test_corrupt_input_is_refused_and_left_untouched(tmp_path, capsys, damage, message):
    good, bad = tmp_path / "f" / "none_rtp", tmp_path / "f" / "x_rtp"
    _write_working(good, _metrics("none"), _sampled_rows(6, 0))
    _write_working(bad, _metrics("x"), _sampled_rows(6, 1))
    damage(bad)
    files = _snapshot(bad)
    assert compact.main([str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err
    assert f"refused {bad}" in err
    assert any(re.search(message, line) for line in err.splitlines()), err
    assert _snapshot(bad) == files  # untouched, no lock file left behind
    assert rundir.is_compact(good)


def test_damaged_compact_files_name_the_file_and_the_remedy(tmp_path):
    root = tmp_path / "f"
    _write_working(root / "none_rtp", _metrics("none"), _sampled_rows(6, 0))
    _write_working(root / "x_rtp", _metrics("x"), _sampled_rows(6, 1))
    compact.compact_tree(root)
    path = root / "x_rtp" / COMPACT
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"{path}: not readable as bzip2.*git checkout -- {path}"):
        rundir.read_rows(root / "x_rtp")
    path.write_bytes(data)
    table = rundir.shared_rows(root / SHARED)
    table["rtp|sampled|"]["3"]["generations"][0] = "edited"
    (root / SHARED).write_bytes(rundir.encode_shared(table))
    with pytest.raises(ValueError, match=r"x_rtp/run\.jsonl\.bz2: its reference rows in .*shared_rows\.jsonl\.bz2 .*"
                                         r"changed since it was written"):
        rundir.read_rows(root / "x_rtp")


def test_a_run_in_use_is_skipped(tmp_path):
    from benchmarks.store import RunLock

    d = tmp_path / "f" / "none_rtp"
    _write_working(d, _metrics("none"), _sampled_rows(2, 0))
    with RunLock(d):
        summary = compact.compact_tree(tmp_path / "f")
    assert [o.action for o in summary.outcomes] == ["skipped"] and "in use" in summary.outcomes[0].detail
    assert not rundir.is_compact(d)


def test_publish_copies_only_compact_files_and_refuses_to_overwrite(tmp_path, capsys):
    src, dst = tmp_path / "runs" / "cmp", tmp_path / "docs" / "cmp"
    _write_working(src / "rtp" / "none_rtp", _metrics("none"), _sampled_rows(6, 0))
    _write_working(src / "rtp" / "x_rtp", _metrics("x"), _sampled_rows(6, 1))
    for d in (src / "rtp" / "none_rtp", src / "rtp" / "x_rtp"):
        (d / "run.log").write_text("log\n")
        (d / ".hydra").mkdir()
        (d / ".hydra" / "overrides.yaml").write_text("- method=x\n")
    (src / "rtp" / "multirun.yaml").write_text("hydra: {}\n")
    (src / "report.md").write_text("# report\n")
    (src / "rtp" / "y_rtp").mkdir()
    (src / "rtp" / "y_rtp" / "results.jsonl").write_text('{"key": "0"}\n')  # unfinished
    source = _snapshot(src)

    assert publish.main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert f"copied {src / 'rtp' / 'none_rtp'} -> {dst / 'rtp' / 'none_rtp' / COMPACT}" in out
    assert f"skipped {src / 'rtp' / 'y_rtp'}: unfinished" in out
    assert _files(dst) == ["rtp/none_rtp/run.jsonl.bz2", "rtp/shared_rows.jsonl.bz2", "rtp/x_rtp/run.jsonl.bz2"]
    assert _snapshot(src) == source  # the source is left as it was
    for name in ("none_rtp", "x_rtp"):
        assert rundir.same_run(rundir.read_run(dst / "rtp" / name), rundir.read_run(src / "rtp" / name))

    published = _snapshot(dst)
    assert publish.main([str(src), str(dst)]) == 0 and "unchanged" in capsys.readouterr().out
    assert _snapshot(dst) == published

    _write_working(src / "rtp" / "z_rtp", _metrics("z"), _sampled_rows(6, 2))
    (src / "rtp" / "x_rtp" / "metrics.json").write_text(json.dumps(_metrics("x", n=7)))
    assert publish.main([str(src), str(dst)]) == 2
    assert "x_rtp holds a different run (pass --replace" in capsys.readouterr().err
    assert _snapshot(dst) == published  # nothing written
    assert publish.main([str(src), str(dst), "--replace"]) == 0
    assert rundir.read_metrics(dst / "rtp" / "x_rtp")["n"] == 7 and rundir.is_compact(dst / "rtp" / "z_rtp")


def test_working_and_compact_forms_read_alike(tmp_path):
    d = tmp_path / "r"
    rows = _sampled_rows(3, 0)
    _write_working(d, _metrics("none"), rows)
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text("- method=none\n")
    working = rundir.read_run(d)
    compact.compact_tree(d)
    assert os.listdir(d) == [COMPACT]
    assert rundir.same_run(rundir.read_run(d), working) and working.overrides == ["method=none"]
    assert rundir.metrics_path(d) == rundir.rows_path(d) == d / COMPACT
    assert isinstance(rundir.read_run(d), Run)


# The published reports under docs/results, regenerated from the committed run dirs. Left out:
STALE = {
    # written by an older report.py (no side-by-side table, no edit-cost column); the runs were
    # resumed afterwards, which timed their edits again and rewrote edit_seconds in their metrics
    "docs/results/benchmarks/smollm2-135m": "older report.py",
    "docs/results/benchmarks/smollm2-135m/main": "older report.py",
    "docs/results/benchmarks/smollm2-135m/general": "older report.py",
    # made on another machine from /tmp/gc/rtp: the title and run_dir paths hold that path
    "docs/results/gpu_check/rtp": "made elsewhere",
}
PUBLISHED = sorted(str(p.parent.relative_to(REPO)) for p in (REPO / "docs" / "results").rglob("report.md"))


@pytest.mark.parametrize("folder", [f for f in PUBLISHED if f not in STALE])
def test_published_report_regenerates_byte_for_byte(folder, tmp_path, monkeypatch):
    md = (REPO / folder / "report.md").read_text()
    root = md.splitlines()[0].removeprefix("# Benchmark report: ")
    assert root == folder  # the same relative root as when it was published
    monkeypatch.chdir(REPO)
    report.write_report(root, tmp_path, plots=False)
    assert (tmp_path / "report.md").read_text() == md
    assert (tmp_path / "report.csv").read_bytes() == (REPO / folder / "report.csv").read_bytes()


def _tracked(folder: str):
    try:
        out = subprocess.run(["git", "ls-files", "-z", folder], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in out.decode().split("\0") if name and (REPO / name).exists()]


def test_committed_results_are_compact_and_within_their_budget():
    files = _tracked("docs/results")
    working = [f for f in files if f.name in ("metrics.json", "config.yaml", "run.log", ".lock")
               or ".hydra" in f.parts or re.fullmatch(r"multirun.*\.yaml", f.name)
               or (f.name == "results.jsonl" and (f.parent / "summary.md") not in files)]  # but the archived sweep's
    assert working == []
    assert len(files) <= 800 and sum(-(-f.stat().st_size // 4096) * 4096 for f in files) <= 25e6  # 4 KiB blocks

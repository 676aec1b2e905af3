"""benchmarks.perf on a tiny random model: table structure only, never timings."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from conftest import DINM_REQUEST, make_tiny
from benchmarks import perf, projection
from surgery_editor.methods.DINM.hparams import DINMHyperParams

REQUESTS = [DINM_REQUEST] * 2
PROMPTS = ["you are", "i hate you so", "the weather today is very", "a good friend", "they are dumb and"]


@pytest.fixture(scope="module")
def results(tiny_tok, tmp_path_factory):
    from surgery_editor import ModelSurgeryHyperParams
    from conftest import NEUTRAL, TOXIC

    tmp = tmp_path_factory.mktemp("perf")
    tsv = tmp / "pairs.tsv"
    tsv.write_text("toxic\tneutral1\n" + "".join(f"{t}\t{n}\n" for t, n in zip(TOXIC * 3, NEUTRAL * 3)))
    hp = ModelSurgeryHyperParams(alg_name="ModelSurgery", model_name="tiny", probe_data={
        "path": str(tsv), "positive_column": "toxic", "negative_column": "neutral1"},
        top_k=10, alpha=1.08, cache_dir=str(tmp / "unused"), activation_batch_size=8, probe_epochs=2)
    model = make_tiny("llama", vocab=len(tiny_tok), layers=2, max_positions=256)
    dhp = DINMHyperParams(model_name="tiny", num_steps=2, lr=1e-2, max_length=64)
    out = perf.run_model(model, tiny_tok, "tiny", hp, dhp, probe_sizes=[10, 30], safeedit_requests=REQUESTS,
                         safeedit_n=7, dinm_instances=2, gen_prompts=PROMPTS, max_new_tokens=4, gen_batch_size=2)
    return perf.tables([out]), tmp


def test_edit_table(results):
    frames, _ = results
    edit = frames["edit"]
    assert list(edit.columns) == perf.EDIT_COLUMNS
    assert edit["probe_pairs"].tolist() == [10, 30] and edit["probe_texts"].tolist() == [20, 60]
    assert (edit["rows_edited"] == 10).all() and (edit["device"] == "cpu").all()
    for col in ("edit_cold_s", "floor_s", "edit_cached_s", "edit_cold_peak_rss_mb", "floor_peak_rss_mb"):
        assert (edit[col] > 0).all(), col
    assert (edit["edit_cold_rss_delta_mb"] >= 0).all()
    assert edit["edit_over_floor"].tolist() == pytest.approx((edit["edit_cold_s"] / edit["floor_s"]).tolist())
    assert edit["first_over_cached"].tolist() == pytest.approx((edit["edit_cold_s"] / edit["edit_cached_s"]).tolist())
    assert edit["edit_cold_cuda_peak_mb"].isna().all()  # CPU


def test_dinm_table(results):
    frames, _ = results
    dinm = frames["dinm"]
    assert list(dinm.columns) == perf.DINM_COLUMNS and len(dinm) == 1
    row = dinm.iloc[0]
    edit = frames["edit"]
    assert row["dinm_instances_timed"] == 2 and row["safeedit_n"] == 7 and row["probe_pairs"] == 30
    assert row["dinm_instance_s_min"] <= row["dinm_instance_s"] <= row["dinm_instance_s_max"]
    assert row["surgery_edit_s"] == edit.loc[edit["probe_pairs"] == 30, "edit_cold_s"].item()
    assert row["dinm_run_total_s"] == pytest.approx(7 * row["dinm_instance_s"])
    assert row["surgery_run_total_s"] == row["surgery_edit_s"]
    assert row["dinm_run_over_surgery"] == pytest.approx(row["dinm_run_total_s"] / row["surgery_run_total_s"])
    assert row["dinm_instance_over_surgery"] == pytest.approx(row["dinm_instance_s"] / row["surgery_edit_s"])


def test_generation_table(results):
    frames, _ = results
    gen = frames["generation"]
    assert list(gen.columns) == perf.GEN_COLUMNS and len(gen) == 1
    row = gen.iloc[0]
    assert row["prompts"] == len(PROMPTS) and row["batched_batch_size"] == 2 and row["max_new_tokens"] == 4
    assert bool(row["identical_outputs"]) is True
    assert 0 < row["new_tokens"] <= len(PROMPTS) * 4
    assert row["batched_speedup"] == pytest.approx(row["single_s"] / row["batched_s"])
    assert row["single_tok_per_s"] == pytest.approx(row["new_tokens"] / row["single_s"])
    assert row["batched_tok_per_s"] == pytest.approx(row["new_tokens"] / row["batched_s"])  # identical outputs


def test_write_tables_round_trip(results):
    frames, tmp = results
    paths = perf.write_tables(frames, tmp / "out", {"command": "python -m benchmarks.perf --quick"})
    for name, frame in frames.items():
        back = pd.read_csv(paths[name])
        assert list(back.columns) == list(frame.columns) and len(back) == len(frame)
    md = paths["md"].read_text()
    assert "python -m benchmarks.perf --quick" in md and "edit_over_floor" in md and "identical_outputs" in md
    assert not list((tmp / "out").glob(".*.tmp"))


def test_measure_reports_a_transient_memory_peak(monkeypatch):
    """The sampler thread sees a peak that is gone by the end of the step (RSS scripted, so the
    test does not depend on what the allocator keeps from earlier tests)."""
    import time

    rss = {"mb": 100.0}
    monkeypatch.setattr(perf.PeakRSS, "_rss", lambda self: rss["mb"])

    def step():
        rss["mb"] = 164.0
        time.sleep(0.3)  # ~60 sampling intervals
        rss["mb"] = 120.0
        return "done"

    result, st = perf.measure(step)
    assert result == "done"
    assert st["peak_rss_mb"] == 164.0 and st["rss_delta_mb"] == 64.0 and math.isnan(st["cuda_peak_mb"])


def test_safeedit_prefix_table(tiny_tok):
    model = make_tiny("llama", vocab=len(tiny_tok), layers=2, max_positions=256)
    row = perf.measure_safeedit_prefix(model, tiny_tok, REQUESTS, "tiny", max_new_tokens=3, batch_size=4, min_shared=3)
    assert row["records"] == 2 and row["inputs"] == 10  # DS + 4 DG inputs each
    assert row["identical_outputs"] == 10
    assert 0 < row["shared_token_share"] < 1  # the two records are the same text: a prefix is shared
    assert row["batched_s"] > 0 and row["shared_prefix_s"] > 0 and math.isfinite(row["speedup"])
    assert list(perf.tables([{"edit": [], "dinm": [], "generation": [], "safeedit_prefix": [row]}])
                ["safeedit_prefix"].columns) == perf.PREFIX_COLUMNS


def test_sampling_table(tiny_tok):
    model = make_tiny("llama", vocab=len(tiny_tok), layers=2, max_positions=256)
    row = perf.measure_sampling(model, tiny_tok, PROMPTS[:2], "tiny", num_samples=3, max_new_tokens=4)
    assert row["prompts"] == 2 and row["texts"] == 6 and row["vocab"] == len(tiny_tok)
    assert row["identical_texts"] == 6  # same seeds, same nucleus
    assert row["sort_s"] > 0 and row["sort_free_s"] > 0 and math.isfinite(row["speedup"])
    frame = perf.tables([{"sampling": [row]}])["sampling"]
    assert list(frame.columns) == perf.SAMPLING_COLUMNS and len(frame) == 1


def test_only_sampled_needs_prompts(capsys):
    with pytest.raises(SystemExit):
        perf.main(["--only-sampled"])
    assert "--sampled-prompts" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# The 7B-shape path, at the tiny shape with tiny counts (scripts/gpu_perf7b.sh runs it at 7B)
# ---------------------------------------------------------------------------------------
TINY_ARGS = ["--model", "shape:tiny-llama", "--device", "cpu", "--probe-sizes", "10", "--dinm-instances", "1",
             "--rtp-prompts", "3", "--single-prompts", "2", "--gen-batch-size", "2", "--max-new-tokens", "2",
             "--toxigen-prompts", "2", "--safeedit-records", "1", "--safeedit-new-tokens", "2",
             "--sampled-prompts", "1", "--num-samples", "2", "--pairs", "4", "--dpo-pairs", "2",
             "--lm-eval-docs", "1", "--ppl-docs", "1", "--lm-eval-batch-size", "2", "--judge-texts", "3",
             "--load", "--project", "--gpus", "1", "3"]


@pytest.fixture(scope="module")
def shape_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf7b")
    rc = perf.main(TINY_ARGS + ["--out", str(out)])
    return rc, out


def test_shape_run_writes_every_table_with_its_columns(shape_run):
    from surgery_editor.models import COST_ONLY

    rc, out = shape_run
    assert rc == 0  # no step failed
    expected = {**perf.TABLES, "projection": projection.JOB_COLUMNS, "sweep": projection.SWEEP_COLUMNS}
    frames = {name: pd.read_csv(out / f"{name}.csv") for name in expected}
    for name, columns in expected.items():
        assert list(frames[name].columns) == columns, name
        assert len(frames[name]) > 0, name
        if "weights" in columns:
            assert (frames[name]["weights"] == COST_ONLY).all(), name
    md = (out / "perf.md").read_text()
    assert f"**Model with {COST_ONLY}**" in md and "Not measured" not in md
    assert "Projection: the comparison as a submitit_slurm sweep over N GPUs" in md


def test_shape_run_measures_every_step(shape_run):
    _, out = shape_run
    read = lambda name: pd.read_csv(out / f"{name}.csv")  # noqa: E731
    edit = read("edit").iloc[0]
    assert edit["probe_texts"] == 20 and edit["batch_size"] == 16 and edit["weights_copy_mb"] > 0
    gen = read("generation").set_index("benchmark")
    assert set(gen.index) == {"rtp", "toxigen"}
    assert gen.loc["rtp", "prompts"] == 3 and gen.loc["rtp", "single_prompts"] == 2
    assert gen.loc["rtp", "batched_batch_size"] == 2 and bool(gen.loc["rtp", "identical_outputs"])
    assert gen.loc["toxigen", "max_new_tokens"] == 48 and gen.loc["toxigen", "single_prompts"] == 0
    assert read("sampling").iloc[0]["samples_per_prompt"] == 2 and read("safeedit_prefix").iloc[0]["records"] == 1
    assert read("dinm").iloc[0]["dinm_instances_timed"] == 1
    methods = read("methods")
    assert sorted(zip(methods["method"], methods["phase"])) == sorted([
        ("ProFS", "cold"), ("ProFS", "cached"), ("ProFS_random", "no states"), ("steer", "cached"),
        ("steer", "cold"), ("steer_random", "cached"), ("DPO", "train")])
    assert (methods["held_mb"] == 0).all()  # a CPU model: nothing held on an accelerator
    assert methods.loc[methods["method"] == "DPO", "items"].item() == 2
    assert read("lm_eval")["task"].tolist() == ["boolq", "piqa", "mmlu", "commonsenseqa", "openbookqa", "ppl"]
    assert (read("lm_eval")["docs"] == 1).all()
    assert read("judges")["judge"].tolist() == ["profanity", "toxicity", "safety"]
    load = read("load").iloc[0]
    assert load["parameters"] > 0 and load["weights_mb"] > 0


def test_projection_has_every_job_of_the_comparison(shape_run):
    _, out = shape_run
    jobs = pd.read_csv(out / "projection.csv")
    each = jobs[jobs["method"] != "all"]
    assert sorted(zip(each["part"], each["method"])) == sorted(
        (p, m) for p in projection.COMPARE_PARTS for m in projection.COMPARE_METHODS)
    assert not each["total_s"].isna().any() and not each["basis"].str.contains("not measured").any()
    totals = jobs[jobs["method"] == "all"].set_index("part")
    assert list(totals.index) == [*projection.COMPARE_PARTS, "all"]
    assert totals.loc["all", "total_s"] == pytest.approx(each["total_s"].sum())
    for part in projection.COMPARE_PARTS:
        assert totals.loc[part, "total_s"] == pytest.approx(each.loc[each["part"] == part, "total_s"].sum())
    edits = each.set_index(["part", "method"])["edit"]
    assert edits[("rtp", "ModelSurgery")] == "cold" and edits[("ppl", "ModelSurgery")] == "cached"
    assert edits[("rtp", "ModelSurgery_random")] == "cached"  # the control reads ModelSurgery's probe
    assert edits[("rtp", "ProFS")] == "cold" and edits[("rtp", "steer")] == "cached"  # the pairs' states shared
    assert edits[("safeedit", "DINM")] == "144 per-record" and edits[("rtp", "DINM")] == "one record"
    assert edits[("rtp", "DPO")] == edits[("general", "DPO_shuffled")] == "train"
    sweep = pd.read_csv(out / "sweep.csv")
    assert sweep["gpus"].tolist() == [1, 3] and (sweep["jobs"] == len(each)).all()
    one, three = sweep.iloc[0], sweep.iloc[1]
    assert three["wall_s"] <= one["wall_s"] and three["wall_s"] >= one["wall_s"] / 3
    assert three["wall_s"] >= three["longest_job_s"]


def test_makespan_hands_the_longest_jobs_out_first():
    # 5 | 4, then each job to the less busy GPU: 5+3 | 4+3+3 -> 10 (the best split, 9, is not searched for)
    assert projection._makespan([3, 5, 3, 4, 3], 2) == 10
    assert projection._makespan([10, 1, 1], 4) == 10
    assert projection._makespan([2, 2, 2, 2], 1) == 8


def test_compare_parts_and_methods_follow_compare_sh():
    """The projection's parts, their order, their item counts and its methods are those of
    scripts/compare.sh (counts from the benchmarks' own loaders, on the offline data)."""
    import re

    from benchmarks.general import General
    from benchmarks.protocols import get_benchmark_class
    from benchmarks.challenging import challenging_path
    from conftest import DATA_DIR, REPO

    script = (REPO / "scripts" / "compare.sh").read_text()
    methods = re.search(r"^ALL=(\S+)", script, re.M).group(1).split(",")
    assert methods == projection.COMPARE_METHODS
    parts = [p for p in re.findall(r"case \$PART in ([\w-]+)\|all\)", script) if p != "report"]
    assert parts == list(projection.COMPARE_PARTS)
    data = str(DATA_DIR)
    counts = {
        "rtp": len(get_benchmark_class("rtp")({"subset": "confirm"}, data).load_items()),
        "safeedit": len(get_benchmark_class("safeedit")({}, data).load_items()),
        "toxigen": len(get_benchmark_class("toxigen")({"limit": 1000, "limit_per_group": 20}, data).load_items()),
        "sampled": len(get_benchmark_class("rtp")({"subset": "confirm", "limit": 200}, data).load_items()),
        "ppl": len(General({"tasks": [], "perplexity": True}, data).load_items()),
    }
    general = General({"tasks": ["boolq", "piqa", "mmlu", "commonsenseqa", "openbookqa"], "perplexity": False,
                       "limit_per_task": 100}, data).load_items()
    counts["general"] = len(general)
    if challenging_path().is_file():
        counts["challenging"] = len(get_benchmark_class("rtp")({"prompts": "challenging", "subset": "confirm"},
                                                               data).load_items())
    for part, n in counts.items():
        assert projection.COMPARE_PARTS[part].items == n, part
    for part in ("challenging-sampled",):
        assert projection.COMPARE_PARTS[part].items == 200 and "benchmark.limit=200" in script

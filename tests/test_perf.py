"""benchmarks.perf on a tiny random model: table structure only, never timings."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from conftest import DINM_REQUEST, make_tiny
from benchmarks import perf
from surgery_editor.methods.dinm.dinm import DINMHyperParams

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

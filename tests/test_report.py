"""benchmarks.report on hand-made run directories (the layout benchmarks/run.py writes)."""

import json
import logging
import random

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, wilcoxon

from benchmarks import report, stats

KEYS = [f"k{i:02d}" for i in range(20)]
ENV = {"model": "tiny", "protocol": "greedy", "judge": "profanity", "dinm_backend": None}


def _write_run(d, metrics, items, shuffle=False):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text("method: x\n")
    if shuffle:  # pairing must go by key, not by line order
        items = list(items)
        random.Random(0).shuffle(items)
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))


def _rtp_items(toxic, keys=KEYS):
    return [{"key": k, "input": f"prompt {k}", "generation": "...", "flags": {"toxic_rate": k in toxic},
             "values": {"mean_toxicity": 0.9 if k in toxic else 0.1}} for k in keys]


def _rtp_metrics(method, label, toxic, n=20, hparams=None, **extra):
    return {"method": method, "label": label, "benchmark": "rtp", **ENV, "hparams": hparams or {}, "n": n,
            "edit_seconds": 1.5, "eval_seconds": 12.25, "toxic_rate": len(toxic) / n,
            "mean_toxicity": (0.9 * len(toxic) + 0.1 * (n - len(toxic))) / n, **extra}


TOX_NONE = set(KEYS[:10])                      # 10/20 toxic
TOX_A1 = {"k00", "k01", "k19"}                 # vs none: 8 only before, 1 only after
TOX_A05 = set(KEYS[:6])                        # vs none: 4 only before, 0 only after
TOX_RANDOM = set(KEYS[:9])                     # vs alpha=1: 7 only random, 1 only edited
SAFE_NONE = set(KEYS[:4])                      # SafeEdit DS: 4/10 safe
SAFE_MS = set(KEYS[:9])                        # 9/10 safe


def _safeedit(d, method, safe, dg):
    keys = KEYS[:10]
    items = [{"key": k, "flags": {"DS": k in safe, **{m: k in dg for m in ("DG_onlyQ", "DG_otherA",
                                                                          "DG_otherQ", "DG_otherAQ")}},
              "values": {"DG_avg": 1.0 if k in dg else 0.0, "fluency": 5.0 + (k in safe)}} for k in keys]
    metrics = {"method": method, "label": method, "benchmark": "safeedit", **ENV, "hparams": {}, "n": 10,
               "edit_seconds": 0.0, "eval_seconds": 3.0, "DS": 10.0 * len(safe),
               **{m: 10.0 * len(dg) for m in ("DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ", "DG_avg")},
               "fluency": 5.0 + len(safe) / 10, "knowledge": 0.9, "edit_seconds_per_instance": 0.0,
               "hparams_file": "hparams/x.yaml"}
    _write_run(d, metrics, items)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "runs"
    # a smaller unedited run sorted first: the n=20 runs must pair with the n=20 one
    _write_run(root / "a_none_small", _rtp_metrics("none", "none", {"k00"}, n=5), _rtp_items({"k00"}, KEYS[:5]))
    _write_run(root / "rtp_none", _rtp_metrics("none", "none", TOX_NONE), _rtp_items(TOX_NONE))
    _write_run(root / "rtp_random", _rtp_metrics("random", "random", TOX_RANDOM, hparams={"alpha": 1.0}),
               _rtp_items(TOX_RANDOM))
    multi = root / "multirun"
    multi.mkdir(parents=True)
    (multi / "multirun.yaml").write_text("hydra: {}\n")
    # job 0: one item lost from results.jsonl
    _write_run(multi / "0", _rtp_metrics("ModelSurgery", "ModelSurgery alpha=0.5", TOX_A05,
                                         hparams={"alpha": 0.5, "top_k": 100, "layers": [1, 2]}),
               _rtp_items(TOX_A05, KEYS[:19]), shuffle=True)
    (multi / "0" / ".hydra").mkdir()
    (multi / "0" / ".hydra" / "config.yaml").write_text("x: 1\n")  # hidden: neither a run nor interrupted
    _write_run(multi / "1", _rtp_metrics("ModelSurgery", "ModelSurgery alpha=1.0", TOX_A1,
                                         hparams={"alpha": 1.0, "top_k": 100, "layers": [1, 2]}, extra_acc=0.75),
               _rtp_items(TOX_A1), shuffle=True)
    _write_run(multi / "2", None, _rtp_items(TOX_A1)[:3])  # interrupted: no metrics.json
    _safeedit(root / "se" / "none", "none", SAFE_NONE, set(KEYS[:2]))
    _safeedit(root / "se" / "ms", "ModelSurgery", SAFE_MS, set(KEYS[:6]))
    return root


def _row(table, label, benchmark="rtp"):
    rows = table[(table["label"] == label) & (table["benchmark"] == benchmark)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_wilson_interval_matches_hand_computed_value():
    # 3/20, z=1.96: centre (0.15 + z^2/40)/(1 + z^2/20), half z*sqrt(.15*.85/20 + z^2/1600)/(1 + z^2/20)
    lo, hi = stats.wilson_interval(3, 20)
    assert lo == pytest.approx(0.05237, abs=1e-4) and hi == pytest.approx(0.36042, abs=1e-4)
    assert stats.wilson_interval(20, 20)[1] == pytest.approx(1.0)
    assert all(np.isnan(stats.wilson_interval(0, 0)))
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(5, 3)


def test_paired_helpers():
    assert stats.wilcoxon_p([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    before, after = [0.1, 0.5, 0.9, 0.3, 0.8, 0.7], [0.0, 0.2, 0.1, 0.35, 0.1, 0.2]
    assert stats.wilcoxon_p(before, after) == pytest.approx(wilcoxon(np.subtract(after, before)).pvalue)
    res = stats.paired_test([1, 1, 1, 0], [0, 0, 1, 0], "flags")
    assert res == {"n": 4, "diff": -0.5, "p_value": pytest.approx(binomtest(0, 2, 0.5).pvalue)}
    with pytest.raises(ValueError, match="kind"):
        stats.paired_test([1], [1], "ranks")


def test_collect_finds_runs_at_any_depth_and_skips_interrupted(root, caplog):
    with caplog.at_level(logging.WARNING, logger="benchmarks.report"):
        runs = report.collect(root)
    dirs = [str(p.relative_to(root)) for p in map(type(root), runs["run_dir"])]
    assert dirs == ["a_none_small", "multirun/0", "multirun/1", "rtp_none", "rtp_random", "se/ms", "se/none"]
    assert runs.attrs["skipped"] == [str(root / "multirun" / "2")]
    assert any("multirun/2" in r.getMessage() and "metrics.json" in r.getMessage() for r in caplog.records)
    ms = runs.set_index("label").loc["ModelSurgery alpha=1.0"]
    assert ms["hp.alpha"] == 1.0 and ms["hp.top_k"] == 100 and ms["hp.layers"] == "[1, 2]"
    assert ms["extra_acc"] == 0.75 and "hparams" not in runs.columns
    # a single run dir as the root
    single = report.collect(root / "rtp_none")
    assert len(single) == 1 and single.loc[0, "method"] == "none"


def test_summary_table_rows_columns_and_paired_tests(root, caplog):
    with caplog.at_level(logging.WARNING, logger="benchmarks.report"):
        table = report.summary_table(report.collect(root))
    # ordering: model, benchmark, method with none first, label
    assert list(zip(table["benchmark"], table["label"])) == [
        ("rtp", "none"), ("rtp", "none"), ("rtp", "ModelSurgery alpha=0.5"), ("rtp", "ModelSurgery alpha=1.0"),
        ("rtp", "ModelSurgery_random"), ("safeedit", "none"), ("safeedit", "ModelSurgery")]  # recorded as random
    cols = list(table.columns)
    assert cols[:7] == ["label", "method", "model", "benchmark", "protocol", "judge", "n"]
    metrics = ["DS", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ", "DG_avg", "fluency", "knowledge",
               "toxic_rate", "mean_toxicity", "extra_acc"]
    assert cols[7:18] == metrics
    assert "expected_max_toxicity" not in cols and "toxicity_probability" not in cols  # no run has them
    for c in ("toxic_rate_ci_low", "DS_ci_high", "toxic_rate_p_vs_none", "toxic_rate_p_vs_control",
              "DS_p_vs_none", "DG_avg_diff_vs_none", "mean_toxicity_p_vs_none", "n_vs_none"):
        assert c in cols, c
    assert "DS_p_vs_control" not in cols  # no SafeEdit random run
    assert cols.index("edit_seconds") > cols.index("n_vs_control")
    assert cols[cols.index("edit_seconds"):cols.index("edit_seconds") + 4] == [
        "edit_seconds", "eval_seconds", "edit_seconds_per_instance", "hp.alpha"]  # runs of older harnesses:
    assert not any("dinm_backend" in c for c in cols)  # their null dinm_backend key is dropped
    assert cols[-6:] == ["hp.alpha", "hp.layers", "hp.top_k", "ref_none_run", "ref_control_run", "run_dir"]
    assert "hparams_file" not in cols  # free-text extras stay in collect()'s frame only

    a1 = _row(table, "ModelSurgery alpha=1.0")
    assert a1["toxic_rate"] == pytest.approx(0.15) and a1["n"] == 20
    # McNemar vs none: discordant 8 (toxic only unedited) / 1 (only edited), items shuffled in the file
    assert a1["toxic_rate_p_vs_none"] == pytest.approx(binomtest(1, 9, 0.5).pvalue)
    assert a1["toxic_rate_p_vs_none"] == pytest.approx(20 / 512)
    assert a1["toxic_rate_diff_vs_none"] == pytest.approx(0.15 - 0.5)
    assert a1["toxic_rate_p_vs_control"] == pytest.approx(binomtest(1, 8, 0.5).pvalue)
    assert (a1["toxic_rate_ci_low"], a1["toxic_rate_ci_high"]) == (pytest.approx(0.05237, abs=1e-4),
                                                                    pytest.approx(0.36042, abs=1e-4))
    assert a1["ref_none_run"] == str(root / "rtp_none")  # same n, not the first (n=5) unedited run
    diffs = np.array([0.9 if k in TOX_A1 else 0.1 for k in KEYS]) - np.array([0.9 if k in TOX_NONE else 0.1
                                                                               for k in KEYS])
    assert a1["mean_toxicity_p_vs_none"] == pytest.approx(wilcoxon(diffs).pvalue)

    # one item missing from the alpha=0.5 run: 19 paired, with a warning
    a05 = _row(table, "ModelSurgery alpha=0.5")
    assert a05["n_vs_none"] == 19 and a05["toxic_rate_p_vs_none"] == pytest.approx(binomtest(0, 4, 0.5).pvalue)
    assert any("item sets differ" in r.getMessage() and "multirun/0" in r.getMessage() for r in caplog.records)

    # references: the control is tested against none, none against neither (control vs none would repeat it)
    none = table[table["run_dir"] == str(root / "rtp_none")].iloc[0]
    assert pd.isna(none["toxic_rate_p_vs_none"]) and pd.isna(none["toxic_rate_p_vs_control"])
    rnd = _row(table, "ModelSurgery_random")
    assert rnd["toxic_rate_p_vs_none"] == 1.0 and pd.isna(rnd["toxic_rate_p_vs_control"])  # 1 discordant item

    # SafeEdit: percent units for DS/DG, Wilson on 9/10 safe, McNemar 0 vs 5 discordant
    se = _row(table, "ModelSurgery", "safeedit")
    lo, hi = stats.wilson_interval(9, 10)
    assert se["DS"] == 90.0 and se["DS_ci_low"] == pytest.approx(100 * lo) and se["DS_ci_high"] == pytest.approx(100 * hi)
    assert se["DS_p_vs_none"] == pytest.approx(2 * 0.5 ** 5)
    assert se["DS_diff_vs_none"] == pytest.approx(50.0)
    assert se["DG_avg_diff_vs_none"] == pytest.approx(40.0)  # per-item 0..1 values, reported in percent
    assert se["fluency_diff_vs_none"] == pytest.approx(0.5)  # n-gram entropy stays in its own unit
    assert se["knowledge"] == 0.9 and pd.isna(_row(table, "none", "safeedit")["DS_p_vs_none"])


def test_against_none_only_and_ambiguous_reference(tmp_path, caplog):
    root = tmp_path / "r"
    _write_run(root / "n1", _rtp_metrics("none", "none", TOX_NONE), _rtp_items(TOX_NONE))
    _write_run(root / "n2", _rtp_metrics("none", "none", set()), _rtp_items(set()))
    _write_run(root / "ms", _rtp_metrics("ModelSurgery", "ms", TOX_A1), _rtp_items(TOX_A1))
    with caplog.at_level(logging.WARNING, logger="benchmarks.report"):
        table = report.summary_table(report.collect(root), against=["none"])
    ms = _row(table, "ms")
    assert ms["ref_none_run"] == str(root / "n1")
    assert any("pairing with the first" in r.getMessage() for r in caplog.records)
    assert not any("random" in c for c in table.columns)


def test_write_report_files_parse_and_plots(root, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert printed.strip() == md.strip()
    assert "## rtp" in md and "## safeedit" in md and "### vs none" in md
    assert "0.0391" in md  # McNemar p, 3 significant digits
    for block in md.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.startswith("|")]
        if lines:  # every Markdown table row has the header's number of cells
            assert len({ln.count("|") for ln in lines}) == 1, block
    csv = pd.read_csv(out / "report.csv")
    assert len(csv) == 7 and csv.loc[csv["label"] == "ModelSurgery alpha=1.0", "toxic_rate_p_vs_none"].iloc[0] \
        == pytest.approx(20 / 512)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["DS_DG_avg_safeedit.png", "toxic_rate_rtp.png", "toxic_rate_vs_alpha_rtp.png"]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_no_alpha_plot_without_alpha_variation(tmp_path):
    root = tmp_path / "r"
    _write_run(root / "none", _rtp_metrics("none", "none", TOX_NONE), _rtp_items(TOX_NONE))
    _write_run(root / "ms", _rtp_metrics("ModelSurgery", "ms", TOX_A1, hparams={"alpha": 1.0}), _rtp_items(TOX_A1))
    files = report.write_report(root)
    assert sorted(f.name for f in files) == ["report.csv", "report.md", "toxic_rate_rtp.png"]
    assert all(f.parent == root for f in files)


def test_empty_root_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty" / "interrupted").mkdir(parents=True)
    (tmp_path / "empty" / "interrupted" / "config.yaml").write_text("a: 1\n")
    with pytest.raises(FileNotFoundError, match=r"empty.*metrics\.json"):
        report.collect(tmp_path / "empty")
    assert report.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "metrics.json" in err and str(tmp_path / "empty") in err
    with pytest.raises(FileNotFoundError, match="no such directory"):
        report.collect(tmp_path / "missing")


def test_bad_metrics_json_names_file_and_key(tmp_path):
    _write_run(tmp_path / "r", {"label": "x", "benchmark": "rtp"}, [])
    with pytest.raises(ValueError, match=r"metrics\.json.*\['method', 'model'\]"):
        report.collect(tmp_path / "r")


def test_units_when_every_item_fails_and_sampled_metrics(tmp_path):
    root = tmp_path / "r"
    _safeedit(root / "none", "none", set(), set())  # DS = 0: percent all the same
    items = [{"key": k, "flags": {"toxicity_probability": i < 5}, "values": {"expected_max_toxicity": i / 20}}
             for i, k in enumerate(KEYS)]
    metrics = {"method": "none", "label": "none", "benchmark": "toxigen", **ENV, "protocol": "sampled",
               "n": 20, "toxicity_probability": 0.25, "expected_max_toxicity": float(np.mean(np.arange(20) / 20))}
    _write_run(root / "sampled", metrics, items)
    table = report.summary_table(report.collect(root))
    se = _row(table, "none", "safeedit")
    assert se["DS"] == 0.0 and se["DS_ci_low"] == 0.0
    assert se["DS_ci_high"] == pytest.approx(100 * stats.wilson_interval(0, 10)[1])
    tg = _row(table, "none", "toxigen")
    assert tg["toxicity_probability_ci_high"] == pytest.approx(stats.wilson_interval(5, 20)[1])  # a share
    assert 0 < tg["expected_max_toxicity_ci_low"] < tg["expected_max_toxicity"] < tg["expected_max_toxicity_ci_high"] < 1


def test_side_by_side_uses_headline_metrics_and_paired_differences(root):
    # the SafeEdit runs name their headline metrics, the RTP runs fall back to the first metric
    for d in (root / "se" / "none", root / "se" / "ms"):
        m = json.loads((d / "metrics.json").read_text())
        (d / "metrics.json").write_text(json.dumps({**m, "headline": ["DS", "DG_avg"]}))
    table = report.summary_table(report.collect(root))
    wide = report.side_by_side(table).set_index("label")
    assert list(wide.columns) == ["rtp toxic_rate (n=20/5)", "safeedit DS (n=10)", "safeedit DG_avg (n=10)", "edit s"]
    p = binomtest(0, 5, 0.5).pvalue  # SafeEdit DS: 5 items safe only after the edit
    assert wide.loc["ModelSurgery", "safeedit DS (n=10)"] == f"90.0 (+50.0, p={report._fmt_p(p)})"
    assert wide.loc["none", "safeedit DS (n=10)"] == "40.0"
    cell = wide.loc["ModelSurgery alpha=1.0", "rtp toxic_rate (n=20/5)"]
    # random control: 9 of 20 toxic; 7 items toxic only under it, 1 only under the edit
    assert cell.startswith("0.150 (-0.350, p=") and f"[vs control -0.300, p={report._fmt_p(binomtest(1, 8, 0.5).pvalue)}]" in cell
    assert "## Side by side" in report.to_markdown(table)


def test_frontier_joins_rtp_and_perplexity_runs_by_label(tmp_path):
    def run(name, method, bench, metrics, label=None):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"method": method, "label": label or method, "model": "m",
                                                    "benchmark": bench, "protocol": "greedy", "judge": "j", "n": 4,
                                                    "edit_seconds": 2.0, "eval_seconds": 1.0, **metrics}))

    run("a", "none", "rtp", {"toxic_rate": 0.5})
    run("b", "none", "general", {"perplexity": 20.0, "mc_acc": 0.4})
    run("c", "steer", "rtp", {"toxic_rate": 0.25, "edit_peak_rss_mb": 900.0})
    run("d", "steer", "general", {"perplexity": 30.0, "edit_peak_rss_mb": 950.0})
    run("e", "ProFS", "rtp", {"toxic_rate": 0.1})  # no perplexity run: not a point
    run("f", "steer", "general", {"perplexity": 31.0, "mc_acc": 0.35})  # capability in a later run
    table = report.summary_table(report.collect(tmp_path))
    pts = report.frontier_points(table, "m").set_index("label")
    assert sorted(pts.index) == ["none", "steer"]
    assert pts.loc["steer", "mc_acc"] == 0.35  # taken from the run that has it
    assert pts.loc["steer", "toxic_rate"] == 0.25 and pts.loc["steer", "perplexity"] == 30.0
    assert pts.loc["steer", "edit_peak_rss_mb"] == 950.0 and pts.loc["none", "mc_acc"] == 0.4
    files = report.plot_report(table, tmp_path)
    assert tmp_path / "frontier_m.png" in files and (tmp_path / "frontier_m.png").stat().st_size > 1000


def test_frontier_styles_give_a_control_its_methods_color_hollow():
    pts = pd.DataFrame({"method": ["none", "ModelSurgery", "steer", "ModelSurgery_random", "steer_random",
                                   "ModelSurgery"],
                        "label": ["none", "ms", "steer", "ModelSurgery_random", "steer_random", "ms[layerwise]"]})
    st = report.frontier_styles(pts)
    assert list(st["hollow"]) == [False, False, False, True, True, False]
    assert st["color"][3] == st["color"][1] == st["color"][5]  # ModelSurgery_random is ModelSurgery's control
    assert st["color"][4] == st["color"][2] != st["color"][1]  # steer_random is steering's
    assert st["color"][0] == "k" and st["color"][1] != st["color"][2]  # the unedited model in black
    assert list(st["marker"]) == ["o", "o", "o", "o", "o", "s"]  # the second ModelSurgery label: a square


def test_a_plain_reference_prefers_the_methods_default_run(tmp_path, caplog):
    def run(name, method, label, hparams):
        _write_run(tmp_path / name, _rtp_metrics(method, label, set(), hparams=hparams), _rtp_items(set()))

    run("a_layerwise", "ModelSurgery", "ModelSurgery[layerwise] alpha=0.5", {"alpha": 0.5})
    run("b_default", "ModelSurgery", "ModelSurgery", {"alpha": 1.08})
    run("c_aura", "AurA", "AurA", {"pooling": "max"})  # shares no hparam with either
    runs = report.collect(tmp_path).set_index("run_dir", drop=False)
    with caplog.at_level(logging.WARNING, logger="benchmarks.report"):
        ref = report.pick_reference(runs, str(tmp_path / "c_aura"), "ModelSurgery")
    assert ref == str(tmp_path / "b_default")
    assert not any("pairing with the first" in r.getMessage() for r in caplog.records)


def test_a_control_pairs_with_the_run_of_the_same_label_settings(tmp_path):
    # the pairs file is an override the recorded hparams do not hold: only the labels tell the runs apart
    def run(name, method, label):
        _write_run(tmp_path / name, _rtp_metrics(method, label, set(), hparams={"layer": 3}), _rtp_items(set()))

    onpolicy = " pairs.path=runs/onpolicy/pairs.jsonl"
    run("a_random_onpolicy", "steer_random", "steer_random" + onpolicy)
    run("b_random", "steer_random", "steer_random")
    run("c_steer", "steer", "steer")
    run("d_steer_onpolicy", "steer", "steer" + onpolicy)
    runs = report.collect(tmp_path).set_index("run_dir", drop=False)
    pick = lambda name: report.pick_reference(runs, str(tmp_path / name), "steer_random",  # noqa: E731
                                              control_of=["direction"])
    assert pick("c_steer") == str(tmp_path / "b_random")
    assert pick("d_steer_onpolicy") == str(tmp_path / "a_random_onpolicy")


def test_control_is_paired_only_with_the_same_settings(tmp_path):
    def run(name, method, alpha, hp_file="hparams/ModelSurgery/m.yaml"):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({
            "method": method, "label": name, "model": "m", "benchmark": "rtp", "protocol": "greedy", "judge": "j",
            "n": 4, "hparams_file": hp_file, "toxic_rate": 0.5,
            "hparams": {"alpha": alpha, "edit_direction": "random" if method == "random" else "probe"}}))

    run("ms1", "ModelSurgery", 1.0)
    run("ms2", "ModelSurgery", 2.0)
    run("ms3", "ModelSurgery", 1.0, "hparams/ModelSurgery/m-layerwise.yaml")
    run("rnd1", "random", 1.0)  # recorded under the control's former name
    runs = report.collect(tmp_path).set_index("label", drop=False)
    assert runs.loc["rnd1", "method"] == "ModelSurgery_random"
    pick = lambda label: report.pick_reference(runs, label, "ModelSurgery_random",  # noqa: E731
                                               control_of=["edit_direction"])
    assert pick("ms1") == "rnd1"
    assert pick("ms2") is None  # a control of another alpha is no control
    assert pick("ms3") is None  # nor one of another variant (hparams file)
    assert report.pick_reference(runs, "ms2", "ModelSurgery_random") == "rnd1"  # plain references stay lenient


def test_sampled_runs_get_their_own_columns_and_the_frontier_keeps_greedy(tmp_path):
    def run(name, method, bench, protocol, metrics, headline):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"method": method, "label": method, "model": "m",
                                                    "benchmark": bench, "protocol": protocol, "judge": "j", "n": 4,
                                                    "edit_seconds": 2.0, "eval_seconds": 1.0, "headline": headline,
                                                    **metrics}))

    sampled = ["expected_max_toxicity", "toxicity_probability"]
    run("a", "none", "rtp", "greedy", {"toxic_rate": 0.5}, ["toxic_rate"])
    run("b", "none", "rtp", "sampled", {"toxic_rate": 0.2, "expected_max_toxicity": 0.6,
                                        "toxicity_probability": 0.75}, sampled)
    run("c", "none", "general", "greedy", {"perplexity": 20.0}, ["perplexity"])
    run("d", "steer", "rtp", "sampled", {"toxic_rate": 0.9, "expected_max_toxicity": 0.3,
                                         "toxicity_probability": 0.25}, sampled)
    run("e", "steer", "rtp", "greedy", {"toxic_rate": 0.25}, ["toxic_rate"])
    run("f", "steer", "general", "greedy", {"perplexity": 30.0}, ["perplexity"])
    table = report.summary_table(report.collect(tmp_path))
    wide = report.side_by_side(table).set_index("label")
    assert sorted(wide.columns) == ["edit s", "general perplexity (n=4)", "rtp (sampled) expected_max_toxicity (n=4)",
                                    "rtp (sampled) toxicity_probability (n=4)", "rtp toxic_rate (n=4)"]
    assert wide.loc["none", "rtp toxic_rate (n=4)"] == "0.500"  # the greedy run, not the sampled one
    assert wide.loc["steer", "rtp (sampled) toxicity_probability (n=4)"].startswith("0.250")
    pts = report.frontier_points(table, "m").set_index("label")
    assert pts.loc["none", "toxic_rate"] == 0.5 and pts.loc["steer", "toxic_rate"] == 0.25
    names = {p.name for p in report.plot_report(table, tmp_path)}
    assert {"toxic_rate_rtp.png", "toxic_rate_rtp_sampled.png"} <= names


def test_sampled_protocol_headline_is_what_rtp_papers_report():
    from benchmarks.protocols import RealToxicityPrompts, ToxiGen

    assert RealToxicityPrompts({"protocol": "sampled"}).headline == ["expected_max_toxicity", "toxicity_probability"]
    assert RealToxicityPrompts({}).headline == ToxiGen({}).headline == ["toxic_rate"]


def test_generations_holding_unicode_line_separators_are_read_whole(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 / U+0085 raw; str.splitlines would cut the record
    items = _rtp_items({"k00"}, KEYS[:3])
    items[0]["generation"] = "one\u2028two\x85three"
    d = tmp_path / "run"
    d.mkdir()
    (d / "results.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items),
                                     encoding="utf-8")
    run = report.load_items(d)
    kind, values = run.metrics["toxic_rate"]
    assert run.keys == frozenset(KEYS[:3]) and kind == "flags" and values["k00"] == 1.0 and values["k01"] == 0.0


def test_challenging_prompts_get_their_own_columns_pairing_and_the_frontier(tmp_path):
    def run(name, method, bench, metrics, prompts=None, toxic=()):
        extra = {"prompts": prompts} if prompts else {}
        _write_run(tmp_path / name, {"method": method, "label": method, "model": "m", "benchmark": bench,
                                     "protocol": "greedy", "judge": "j", "n": 20, "edit_seconds": 2.0,
                                     "eval_seconds": 1.0, "headline": list(metrics)[:1], **extra, **metrics},
                   _rtp_items(set(toxic)) if bench == "rtp" else [])

    run("a", "none", "rtp", {"toxic_rate": 0.1}, toxic=KEYS[:2])
    run("b", "none", "rtp", {"toxic_rate": 0.5}, "challenging", toxic=KEYS[:10])
    run("c", "steer", "rtp", {"toxic_rate": 0.05}, toxic=KEYS[:1])
    run("d", "steer", "rtp", {"toxic_rate": 0.25}, "challenging", toxic=KEYS[:5])
    run("e", "none", "general", {"perplexity": 20.0})
    run("f", "steer", "general", {"perplexity": 30.0})
    table = report.summary_table(report.collect(tmp_path), against=["none"])
    by_dir = table.set_index(table["run_dir"].map(lambda p: p.rsplit("/", 1)[-1]))
    # each steer run is paired with the unedited run of its own prompt set
    assert by_dir.loc["d", "ref_none_run"].endswith("/b") and by_dir.loc["c", "ref_none_run"].endswith("/a")
    assert by_dir.loc["d", "toxic_rate_diff_vs_none"] == pytest.approx(-0.25)
    wide = report.side_by_side(table).set_index("label")
    assert wide.loc["steer", "rtp challenging toxic_rate (n=20)"].startswith("0.250 (-0.250")
    assert wide.loc["steer", "rtp toxic_rate (n=20)"].startswith("0.050")
    pts = report.frontier_points(table, "m").set_index("label")
    assert pts.attrs["view"] == "rtp challenging"
    assert pts.loc["none", "toxic_rate"] == 0.5 and pts.loc["steer", "toxic_rate"] == 0.25
    # without challenging runs the frontier falls back to the default sample
    assert report.frontier_view(table[table["prompts"].isna()], "m") == "rtp"


def test_runs_recorded_before_the_backend_became_an_edit_fact_read_as_now(tmp_path):
    old = {"method": "DINM", "label": "DINM", "model": "m", "benchmark": "safeedit", "protocol": "greedy",
           "judge": "j", "n": 2, "DS": 50.0, "dinm_backend": "easyeditor", "edit_facts": {"seconds": 1.5},
           "hparams": {}}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(old))
    row = report.read_metrics(tmp_path / "a")
    assert row["edit_facts.backend"] == "easyeditor" and row["edit_facts.seconds"] == 1.5
    assert "dinm_backend" not in row
    table = report.summary_table(report.collect(tmp_path))
    assert "edit_facts.backend" in table.columns and "edit_facts.backend" in report.to_markdown(table)


def test_figures_show_a_long_label_by_its_run_dirs_tag():
    from benchmarks.report.figures import LONG_LABEL, _shown

    long = "DPO pairs.chosen_column=nontoxic_continuation pairs.path=runs/onpolicy/m/pairs.jsonl"
    assert _shown("ModelSurgery[layerwise]", "/x/rtp/ModelSurgery-layerwise_rtp") == "ModelSurgery[layerwise]"
    assert _shown(long, "/x/challenging/DPO-onpolicy_rtp") == "DPO-onpolicy"
    cut = _shown(long, "/x/tuning/0")  # a sweep's numbered dir names nothing: the label, cut
    assert len(cut) == LONG_LABEL and cut.endswith("…") and long.startswith(cut[:-1])
    assert _shown(long, float("nan")).endswith("…")


def test_figures_are_palette_pngs_that_keep_the_picture():
    import io

    from PIL import Image

    from benchmarks.report.figures import palette_png

    rgb = Image.new("RGB", (40, 20), (255, 255, 255))
    for x in range(10, 30):
        for y in range(5, 15):
            rgb.putpixel((x, y), (31, 119, 180))  # matplotlib's C0 bar on white
    raw = io.BytesIO()
    rgb.save(raw, format="png")
    out = palette_png(raw.getvalue())
    back = Image.open(io.BytesIO(out))
    assert back.mode == "P" and back.convert("RGB").tobytes() == rgb.tobytes()  # two colours: exact
    assert palette_png(raw.getvalue()) == out  # deterministic

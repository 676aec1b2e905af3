"""benchmarks.headline: README tables generated from a comparison's report.csv."""

import json

import pytest

from benchmarks import headline, report


def _run(root, name, method, bench, metrics, toxic=(), protocol="greedy", label=None, prompts=None, hparams=None):
    d = root / name
    d.mkdir(parents=True)
    keys = [f"k{i}" for i in range(10)]
    items = [{"key": k, "flags": {"toxic_rate": k in toxic}, "values": {"mean_toxicity": float(k in toxic)}}
             for k in keys] if bench == "rtp" else []
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    extra = {"prompts": prompts} if prompts else {}
    (d / "metrics.json").write_text(json.dumps({
        "method": method, "label": label or method, "model": "m", "benchmark": bench, "protocol": protocol,
        "judge": "j", "n": 10, "edit_seconds": 2.0 if method != "none" else 1e-6, "eval_seconds": 1.0,
        "hparams": hparams or {}, **extra, **metrics}))


@pytest.fixture
def comparison(tmp_path):
    root = tmp_path / "docs" / "cmp"
    _run(root, "a", "none", "rtp", {"toxic_rate": 0.5}, toxic=["k0", "k1", "k2", "k3", "k4"], prompts="challenging")
    _run(root, "b", "steer", "rtp", {"toxic_rate": 0.1}, toxic=["k0"], prompts="challenging",
         hparams={"direction": "probe"})
    _run(root, "c", "steer_random", "rtp", {"toxic_rate": 0.5}, toxic=["k0", "k1", "k2", "k3", "k5"],
         prompts="challenging", hparams={"direction": "random"})
    _run(root, "d", "none", "rtp", {"toxic_rate": 0.2}, toxic=["k0", "k1"])  # the sample: not the headline view
    _run(root, "e", "steer", "rtp", {"toxic_rate": 0.0})
    _run(root, "f", "none", "general", {"perplexity": 20.0})
    _run(root, "g", "steer", "general", {"perplexity": 25.0})
    report.write_report(root)
    return tmp_path


def test_table_takes_the_challenging_view_with_paired_differences_and_control(comparison):
    md = ('intro\n<!-- headline root=docs/cmp rows="none;steer" -->\nstale\n<!-- /headline -->\nafter\n')
    out = headline.render(md, comparison)
    assert out.startswith("intro\n") and out.endswith("<!-- /headline -->\nafter\n") and "stale" not in out
    lines = [ln for ln in out.splitlines() if ln.startswith("| steer")]
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    header = [c.strip() for c in out.splitlines()[2].strip("|").split("|")]
    assert header[1] == "RTP greedy toxic share (challenging), n=10"
    assert cells[1] == "0.100 (-0.400, p=0.12) [ctrl -0.400, p=0.12]"  # 4 discordant pairs: 2 x 0.5^4 = 0.125
    assert cells[header.index("perplexity, n=10")] == "25.0" and cells[-1] == "2.0"
    assert headline.render(out, comparison) == out  # regenerating changes nothing
    narrow = headline.render('<!-- headline root=docs/cmp rows="steer" columns="perplexity" -->\n<!-- /headline -->\n',
                             comparison)
    assert narrow.splitlines()[1].replace(" ", "") == "|method|perplexity,n=10|edits|"
    with pytest.raises(ValueError, match="unknown column.*'toxicity'"):
        headline.render('<!-- headline root=docs/cmp rows="steer" columns="toxicity" -->\n<!-- /headline -->\n',
                        comparison)


def test_opt_in_columns_show_only_where_a_mark_names_them(comparison):
    default = headline.render('<!-- headline root=docs/cmp rows="none;steer" -->\n<!-- /headline -->\n', comparison)
    assert "sample split" not in default
    title = "RTP greedy toxic share, sample split"
    both = headline.render(f'<!-- headline root=docs/cmp rows="none;steer" columns="RTP greedy toxic share;{title}" -->'
                           '\n<!-- /headline -->\n', comparison)
    header = [c.strip() for c in both.splitlines()[1].strip("|").split("|")]
    assert header[1:3] == ["RTP greedy toxic share (challenging), n=10", f"{title} (toxicity >= 0.5), n=10"]
    steer = [c.strip() for c in both.splitlines()[4].strip("|").split("|")]
    assert steer[0] == "steer" and steer[2] == "0.000 (-0.200, p=0.5)"  # the sample split: k0, k1 toxic unedited
    renamed = headline.render('<!-- headline root=docs/cmp rows="none;steer => steering, layer 6" -->\n<!-- /headline -->\n',
                              comparison)
    assert renamed.splitlines()[4].startswith("| steering, layer 6 | 0.100 (-0.400, p=0.12) [ctrl -0.400, p=0.12]")


def test_check_mode_and_errors(comparison, capsys):
    readme = comparison / "README.md"
    readme.write_text('<!-- headline root=docs/cmp rows="none;steer" -->\n<!-- /headline -->\n')
    assert headline.main([str(readme), "--check"]) == 1
    assert headline.main([str(readme)]) == 0 and headline.main([str(readme), "--check"]) == 0
    readme.write_text(readme.read_text().replace("0.100", "0.050"))  # a number typed by hand
    assert headline.main([str(readme), "--check"]) == 1
    readme.write_text('<!-- headline root=docs/cmp rows="none;DPO" -->\n<!-- /headline -->\n')
    assert headline.main([str(readme)]) == 2
    assert "no runs labelled ['DPO']" in capsys.readouterr().err
    readme.write_text('<!-- headline root=docs/none rows="none" -->\n<!-- /headline -->\n')
    assert headline.main([str(readme)]) == 2 and "python -m benchmarks.report docs/none" in capsys.readouterr().err
    readme.write_text("no marks\n")
    assert headline.main([str(readme)]) == 2


def test_p_values_are_short():
    assert [headline._p(p) for p in (0.125, 0.0343, 0.001, 2.16e-06, 1.04e-29)] == ["0.12", "0.034", "0.001", "2e-6",
                                                                                    "1e-29"]


def test_readme_tables_are_the_generated_ones():
    """The verdict tables in README.md are what `python -m benchmarks.headline README.md` makes from
    the committed reports (which tests/test_compact.py regenerates from the committed runs)."""
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    assert headline.MARK.search(readme.read_text(encoding="utf-8")), "README.md has no headline tables"
    assert headline.main([str(readme), "--check"]) == 0

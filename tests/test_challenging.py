"""RTP's challenging prompts: the registry file's conversion and checks, and the ``rtp``
benchmark's ``prompts=challenging`` set (exclusion of the sample's prompts, the 80/20 split)."""

import hashlib
import json
import zipfile

import pytest

from benchmarks import challenging as ch
from benchmarks.protocols import RealToxicityPrompts


def _raw(texts):
    return "".join(json.dumps({"text": t, "toxicity": 0.9, "profanity": 0.8}) + "\n" for t in texts).encode()


def _source(raw, rows):
    return ch.RegistrySource(package="pkg", version="1.0", member="pkg/data/tox.jsonl",
                             sha256=hashlib.sha256(raw).hexdigest(), rows=rows, licence="MIT")


def _wheel(path, source, raw):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(source.member, raw)
    return path


TEXTS = [f"challenging prompt {i}" for i in range(10)]


def test_convert_writes_rtp_rows_and_refuses_a_changed_file():
    raw = _raw(TEXTS)
    rows = [json.loads(line) for line in ch.convert(raw, _source(raw, 10)).splitlines()]
    assert rows[3] == {"prompt": {"text": "challenging prompt 3", "toxicity": 0.9, "profanity": 0.8},
                       "challenging": True, "source_row": 3}
    with pytest.raises(ValueError, match="sha256 .* is not the pinned"):
        ch.convert(raw + b"\n", _source(raw, 10))
    with pytest.raises(ValueError, match="10 rows, expected 11"):
        ch.convert(raw, _source(raw, 11))
    dup = _raw(TEXTS + [TEXTS[2]])
    with pytest.raises(ValueError, match="rows 2 and 10 hold the same prompt"):
        ch.convert(dup, _source(dup, 11))
    blank = _raw(["a", " "])
    with pytest.raises(ValueError, match="row 1: no prompt text"):
        ch.convert(blank, _source(blank, 2))


def test_fetch_from_a_local_wheel_then_load_the_challenging_split(tmp_path):
    raw = _raw(TEXTS)
    source = _source(raw, 10)
    wheel = _wheel(tmp_path / "pkg-1.0-py3-none-any.whl", source, raw)
    dest = ch.fetch(source, dest=tmp_path / "cache" / "c.jsonl", wheel=wheel)
    assert dest.read_text().count("\n") == 10
    assert ch.fetch(source, dest=dest, wheel=tmp_path / "absent.whl") == dest  # fetched once
    with pytest.raises(ValueError, match="no pkg/data/other.jsonl in this wheel"):
        ch.extract(wheel, ch.RegistrySource("pkg", "1.0", "pkg/data/other.jsonl", "0", 1, "MIT"))

    sample = tmp_path / "sample.jsonl"  # the prompts of the tuning file are left out
    sample.write_text(json.dumps({"prompt": {"text": TEXTS[1], "toxicity": 0.9}, "challenging": True}) + "\n")
    cfg = {"prompts": "challenging", "path": str(dest), "exclude": str(sample)}
    allp = RealToxicityPrompts(cfg).load_items()
    assert [it["key"] for it in allp] == ["0", "2", "3", "4", "5", "6", "7", "8", "9"]  # keys: rows of the file
    confirm = RealToxicityPrompts({**cfg, "subset": "confirm"}).load_items()
    tune = RealToxicityPrompts({**cfg, "subset": "tune"}).load_items()
    assert len(confirm) == 7 and len(tune) == 2  # 80% / 20% of the 9, in file order
    assert [it["key"] for it in confirm + tune] == [it["key"] for it in allp]
    assert RealToxicityPrompts({**cfg, "subset": "confirm", "limit": 3}).load_items() == confirm[:3]
    assert RealToxicityPrompts({**cfg, "exclude": ""}).load_items()[1]["key"] == "1"
    bench = RealToxicityPrompts(cfg)
    assert bench.info() == {"prompts": "challenging"} and RealToxicityPrompts({}).info() == {}


def test_challenging_set_defaults_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGERY_EDITOR_CACHE", str(tmp_path / "cache"))
    bench = RealToxicityPrompts({"prompts": "challenging"})
    assert bench.cfg.path == str(tmp_path / "cache" / "data" / ch.CHALLENGING.file_name)
    assert bench.cfg.challenging_only is True and bench.cfg.min_prompt_toxicity is None
    assert bench.cfg.exclude == "realtoxicityprompts/rtp_random5000_quark_val.jsonl"
    with pytest.raises(FileNotFoundError, match="python -m benchmarks.challenging"):
        bench.load_items()
    sample = RealToxicityPrompts({})
    assert sample.cfg.min_prompt_toxicity == 0.5 and sample.cfg.challenging_only is False
    with pytest.raises(ValueError, match="benchmark.prompts must be one of .*'challenging'.*got 'hard'"):
        RealToxicityPrompts({"prompts": "hard"})
    with pytest.raises(ValueError, match=r"min_prompt_toxicity must be in \[0, 1\]"):
        RealToxicityPrompts({"min_prompt_toxicity": 5})
    with pytest.raises(ValueError, match="confirm_size"):
        RealToxicityPrompts({"confirm_size": 0})


def test_cli_check_says_where_the_file_is(tmp_path, capsys):
    assert ch.main(["--check", "--dest", str(tmp_path / "x.jsonl")]) == 1
    assert "missing:" in capsys.readouterr().out


def test_the_fetched_file_is_rtps_challenging_subset():
    """The claim in benchmarks/challenging.py: of the offline RTP sample, the fetched file holds
    38 of the 49 challenging prompts and none of the others."""
    import pandas as pd

    from benchmarks.protocols import RTP_SAMPLE
    from surgery_editor.data import resolve_path

    fetched, sample = ch.challenging_path(), resolve_path(RTP_SAMPLE)
    if not fetched.is_file() or sample is None:
        pytest.skip("needs the fetched file (python -m benchmarks.challenging) and the offline RTP sample")
    texts = {json.loads(line)["prompt"]["text"].strip() for line in fetched.read_text().splitlines()}
    rows = pd.read_json(sample, lines=True)
    inside = [r["prompt"]["text"].strip() in texts for r in rows.to_dict("records")]
    flags = rows["challenging"].astype(bool).tolist()
    assert sum(flags) == 49 and sum(i and f for i, f in zip(inside, flags)) == 38
    assert not any(i and not f for i, f in zip(inside, flags))

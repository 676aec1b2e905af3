"""Evaluation arithmetic on hand-made inputs, the RTP loader, judges, batched generation."""

import json

import pytest

from surgery_editor import evaluation as ev
from surgery_editor.evaluation.judges import get_judge, register_judge

from conftest import DATA_DIR


def test_mcnemar_exact():
    res = ev.mcnemar_exact([1, 1, 1, 0, 0], [0, 0, 1, 0, 0])
    assert (res["only_before"], res["only_after"]) == (2, 0) and res["p_value"] == pytest.approx(0.5)
    assert ev.mcnemar_exact([1, 0], [1, 0])["p_value"] == 1.0
    big = ev.mcnemar_exact([1] * 20 + [0] * 80, [0] * 100)
    assert big["p_value"] == pytest.approx(2 * 0.5 ** 20)
    with pytest.raises(ValueError, match="equal lengths"):
        ev.mcnemar_exact([1], [1, 0])


def test_ngram_measures():
    assert ev.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert ev.distinct_n(["a b", "c d"], 1) == 1.0
    assert ev.repetition_rate(["a b c d a b c d"], 4) == pytest.approx(1 / 5)
    assert ev.repetition_rate(["short"], 4) == 0.0
    assert ev.ngram_entropy(["a b c"]) == pytest.approx((2 / 3 * 1.0 + 4 / 3 * 0.0) / 2)


def test_rtp_loader_filters(tmp_path):
    rows = [{"prompt": {"text": "a", "toxicity": 0.9}, "challenging": True},
            {"prompt": {"text": "b", "toxicity": 0.2}, "challenging": True},
            {"prompt": {"text": "c", "toxicity": 0.6}, "challenging": False},
            {"prompt": {"text": "d", "toxicity": None}, "challenging": False}]
    path = tmp_path / "rtp.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert ev.load_rtp_prompts(str(path))["text"].tolist() == ["a", "c"]
    assert ev.load_rtp_prompts(str(path), challenging_only=True)["text"].tolist() == ["a"]
    assert ev.load_rtp_prompts(str(path), min_prompt_toxicity=0.0, limit=1)["text"].tolist() == ["a"]
    with pytest.raises(ValueError, match="no prompts with toxicity >= 0.95"):
        ev.load_rtp_prompts(str(path), min_prompt_toxicity=0.95)
    with pytest.raises(FileNotFoundError, match="RealToxicityPrompts file 'missing.jsonl' not found"):
        ev.load_rtp_prompts("missing.jsonl", data_dir=str(tmp_path))


@pytest.mark.skipif(not DATA_DIR.is_dir(), reason="../shared/data not present")
def test_offline_rtp_sample_has_enough_toxic_prompts():
    frame = ev.load_rtp_prompts(data_dir=str(DATA_DIR))
    assert len(frame) >= 1000 and (frame["prompt_toxicity"] >= 0.5).all()


def test_profanity_judge_orders_texts():
    judge = get_judge("profanity")
    scores = judge(["you are a fucking idiot", "the weather is lovely today", ""])
    assert scores[0] >= 0.5 > scores[1] and len(scores) == 3


def test_judge_registry():
    with pytest.raises(KeyError, match=r"unknown judge 'profanty' \(did you mean 'profanity'\?\)"):
        get_judge("profanty")
    with pytest.raises(ValueError, match="already registered"):
        register_judge("profanity")(object)


def test_batched_generation_equals_one_at_a_time(tiny_llama, tiny_tok):
    prompts = ["you are", "the sun is very good and i love the", "i hate", "a nice day today and we"]
    batched = ev.generate(tiny_llama, tiny_tok, prompts, max_new_tokens=6, batch_size=4)
    single = [ev.generate(tiny_llama, tiny_tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert tiny_tok.padding_side == "right"  # restored


def test_perplexity_positive(tiny_llama, tiny_tok):
    ppl = ev.perplexity(tiny_llama, tiny_tok, ["you are kind", "nice day today"])
    assert 1.0 < ppl < 10 * len(tiny_tok)


def test_prefix_groups_share_and_fall_back():
    seqs = [[1, 2, 3, 4, 5], [9, 9], [1, 2, 3, 4, 6, 7], [1, 2, 3], [8, 1, 2, 3, 4], [1, 2, 3, 4, 5, 8]]
    groups = ev.prefix_groups(seqs, batch_size=8, min_shared=3)
    shared = {tuple(sorted(m)): c for m, c in groups if c}
    # 0, 2, 5 share [1, 2, 3, 4]; 3 is [1, 2, 3] itself (it would leave 2 cached tokens, < min_shared)
    assert shared == {(0, 2, 5): 4}
    assert sorted(i for m, _ in groups for i in m) == list(range(6))  # each input exactly once
    loners = [m for m, c in groups if c == 0]
    assert all(len(m) <= 8 for m in loners)
    # a batch limit splits the group
    small = ev.prefix_groups(seqs, batch_size=2, min_shared=3)
    assert all(len(m) <= 2 for m, _ in small)
    assert sorted(i for m, _ in small for i in m) == list(range(6))


def test_shared_prefix_generation_equals_batched_generation(tiny_tok):
    from conftest import make_tiny

    model = make_tiny("llama", vocab=len(tiny_tok), layers=2, max_positions=256)
    head = "you are stupid and i hate you so very really dumb and ugly people are bad"
    prompts = [f"{head} the cat is", f"{head} we love", f"{head}", "nice day", f"{head} they are kind and good",
               "the sun is good", f"{head} the dog"]
    base = ev.generate(model, tiny_tok, prompts, max_new_tokens=5, batch_size=4)
    shared = ev.generate_shared_prefix(model, tiny_tok, prompts, max_new_tokens=5, batch_size=4, min_shared=4)
    assert shared == base
    assert tiny_tok.truncation_side == "right" and tiny_tok.padding_side == "right"  # restored
    groups = ev.prefix_groups([tiny_tok(p)["input_ids"] for p in prompts], 4, 4)
    assert any(c > 0 for _, c in groups)  # the test exercises the cache path

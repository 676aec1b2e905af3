"""NucleusWarper: the same nucleus as transformers' TopPLogitsWarper, without the full sort."""
import pytest
import torch
from transformers import LogitsProcessorList, TopPLogitsWarper

from surgery_editor.evaluation.generation import sample
from surgery_editor.evaluation.sampling import NucleusWarper


def _logits(rows, vocab, spread, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * spread


@pytest.mark.parametrize("top_p", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("spread", [0.3, 3.0, 12.0])  # flat (wide nucleus, full-sort fallback) to peaked
def test_same_tokens_as_transformers(top_p, spread):
    scores = _logits(16, 5000, spread)
    ids = torch.zeros(16, 1, dtype=torch.long)
    want = TopPLogitsWarper(top_p)(ids, scores.clone())
    got = NucleusWarper(top_p, candidates=(8, 64, 512))(ids, scores.clone())
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    assert torch.equal(got[torch.isfinite(got)], scores[torch.isfinite(want)])  # kept logits unchanged


def test_top_p_one_keeps_everything():
    scores = _logits(4, 300, 12.0)  # many tokens underflow to probability 0
    assert torch.equal(NucleusWarper(1.0, candidates=(8,))(None, scores), scores)


def test_falls_back_to_full_sort_only_for_wide_rows():
    peaked, flat = _logits(3, 2000, 20.0, seed=1), _logits(2, 2000, 0.01, seed=2)
    scores = torch.cat([peaked, flat])
    warper = NucleusWarper(0.9, candidates=(16, 64))
    got = warper(torch.zeros(5, 1, dtype=torch.long), scores)
    assert warper.fallbacks == 2
    assert torch.equal(torch.isfinite(got), torch.isfinite(TopPLogitsWarper(0.9)(None, scores)))
    assert torch.isfinite(got[3:]).sum(-1).min() > 64  # the flat rows' nucleus is wider than the list


def test_min_tokens_to_keep():
    scores = torch.tensor([[10.0, 0.0, -1.0, -2.0]])
    got = NucleusWarper(0.1, candidates=(2,), min_tokens_to_keep=3)(None, scores)
    assert torch.isfinite(got).tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("kwargs, match", [
    ({"top_p": 1.5}, "top_p must be in"), ({"top_p": 0.9, "candidates": ()}, "candidates"),
    ({"top_p": 0.9, "candidates": (64, 8)}, "increasing"), ({"top_p": 0.9, "min_tokens_to_keep": 0}, "min_tokens"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NucleusWarper(**kwargs)


@pytest.mark.parametrize("spread", [1.0, 30.0])  # wide nuclei (full sort) and narrow ones (top-k lists)
def test_generate_draws_the_same_tokens(spread):
    from conftest import make_tiny

    model = make_tiny("llama", vocab=512)
    with torch.no_grad():
        model.lm_head.weight.mul_(spread)
    ids = torch.randint(3, 512, (1, 5), generator=torch.Generator().manual_seed(0)).repeat(8, 1)
    warper = NucleusWarper(0.9, candidates=(8, 32))
    runs = []
    for processors in ({"logits_processor": LogitsProcessorList([warper]), "top_p": 1.0}, {"top_p": 0.9}):
        torch.manual_seed(5)
        runs.append(model.generate(ids, do_sample=True, top_k=0, max_new_tokens=12, pad_token_id=0, **processors))
    assert torch.equal(runs[0], runs[1])
    assert len({tuple(r) for r in runs[0].tolist()}) > 1  # they are draws, not eight equal rows
    steps = 8 * 12
    assert (warper.fallbacks == steps) if spread == 1.0 else (warper.fallbacks < steps)


@pytest.mark.parametrize("temperature", [1.0, 3.0])  # the nucleus of the tempered distribution
def test_sample_same_texts_with_and_without_sort(tiny_tok, temperature):
    from conftest import make_tiny

    model = make_tiny("llama", vocab=len(tiny_tok))
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # peaked logits: a nucleus of a few tokens, which temperature widens
    kw = dict(num_samples=6, max_new_tokens=8, seed=3, temperature=temperature)
    fast = sample(model, tiny_tok, "you are", **kw)
    slow = sample(model, tiny_tok, "you are", sort_free=False, **kw)
    assert fast == slow and len(set(fast)) > 1

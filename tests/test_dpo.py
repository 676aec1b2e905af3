"""DPO baseline (surgery_editor.methods.DPO): LoRA-DPO with trl, merged into the weights.

Tiny random Llamas and the word-level tokenizer from conftest; each training is 2-3 steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import DATA_DIR, NEUTRAL, REPO, TOXIC, assert_same_state, make_tiny, state_copy

pytest.importorskip("trl")
pytest.importorskip("peft")

from surgery_editor.methods.DPO import DEFAULT_TARGETS, DPOHyperParams, apply_dpo_to_model, load_preference_pairs
from surgery_editor.methods.DPO.pairs import _split_common_prefix  # noqa: E402

YAMLS = sorted((REPO / "hparams" / "DPO").glob("*.yaml"))


@pytest.fixture
def pairs_tsv(tmp_path) -> Path:
    path = tmp_path / "pairs.tsv"
    rows = ["toxic\tneutral1"] + [f"{t}\t{n}" for t, n in zip(TOXIC, NEUTRAL)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def make_hp(pairs_tsv):
    def make(**overrides):
        base = dict(alg_name="DPO", model_name="tiny",
                    pairs={"path": str(pairs_tsv), "chosen_column": "neutral1", "rejected_column": "toxic"},
                    num_pairs=10, per_device_batch_size=4, learning_rate=2e-2, lora_r=4, lora_alpha=8,
                    max_prompt_length=8, max_seq_length=32, warmup_ratio=0.0)
        base.update(overrides)
        return DPOHyperParams(**base)

    return make


def _completion_logp(model, tok, prompt: str, completion: str) -> torch.Tensor:
    """Summed log p(completion | prompt), scoring the tokens after the shared prompt tokens."""
    p_ids, ids = tok(prompt)["input_ids"], tok(prompt + completion)["input_ids"]
    n = 0
    while n < min(len(p_ids), len(ids)) and p_ids[n] == ids[n]:
        n += 1
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits[0, :-1].float(), -1).gather(-1, x[0, 1:, None])[:, 0]
    return logp[max(n, 1) - 1:].sum()


def _margin(model, tok, pairs) -> float:
    return float(sum(_completion_logp(model, tok, p["prompt"], p["chosen"])
                     - _completion_logp(model, tok, p["prompt"], p["rejected"]) for p in pairs))


def _has_lora(model: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) or "lora" in n.lower() for n, m in model.named_modules())


# ---- (a) the edit does what DPO does ------------------------------------------------------

def test_margin_increases_on_training_pairs(make_hp, tiny_tok):
    model = make_tiny("llama")
    hp = make_hp()
    pairs, _ = load_preference_pairs(hp.pairs, hp.num_pairs, hp.seed, hp.data_dir, tiny_tok)
    before = _margin(model, tiny_tok, pairs)
    info = {}
    out, _ = apply_dpo_to_model(model, tiny_tok, [], hp, info=info)
    after = _margin(out, tiny_tok, pairs)
    assert after > before + 0.1, (before, after)
    assert info["steps"] == 3 and info["num_pairs"] == 10
    for key in ("train_seconds", "peak_rss_mb", "final_loss", "reward_accuracy", "reward_margin", "final_loss_mean",
                "reward_accuracy_mean", "reward_margin_mean", "train_loss", "history"):
        assert info[key] is not None, key
    assert info["peak_rss_mb"] >= info["start_rss_mb"] > 0
    assert [row["step"] for row in info["history"] if "loss" in row] == [1, 2, 3]


def test_seeded_runs_are_identical(make_hp, tiny_tok):
    a, b = make_tiny("llama"), make_tiny("llama")
    apply_dpo_to_model(a, tiny_tok, [], make_hp(num_pairs=8))
    apply_dpo_to_model(b, tiny_tok, [], make_hp(num_pairs=8))
    assert_same_state(a, state_copy(b))


# ---- (b) what changes and what does not -----------------------------------------------------

def test_only_target_weights_change_and_model_is_left_plain(make_hp, tiny_tok):
    model = make_tiny("llama")
    model.model.embed_tokens.weight.requires_grad_(False)  # a mix of flags, kept as they are
    model.model.layers[1].train()  # a mix of modes, kept as they are
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    hooks = {n: len(m._forward_hooks) + len(m._forward_pre_hooks) for n, m in model.named_modules()}
    config = model.config.to_dict()
    tiny_tok.padding_side = "right"
    before = state_copy(model)

    out, weights_copy = apply_dpo_to_model(model, tiny_tok, [], make_hp(lora_target_modules=["q_proj", "down_proj"]))

    assert out is model and weights_copy == {}
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    targets = {f"model.layers.{i}.{m}.weight" for i in range(3) for m in ("self_attn.q_proj", "mlp.down_proj")}
    assert changed and changed <= targets, changed - targets
    assert not _has_lora(model)
    for i in range(3):
        assert type(model.model.layers[i].self_attn.q_proj) is nn.Linear
        assert type(model.model.layers[i].mlp.down_proj) is nn.Linear
    assert set(model.state_dict()) == set(before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: set(vars(m)) for n, m in model.named_modules()} == attrs  # e.g. no patched `forward` left
    assert {n: len(m._forward_hooks) + len(m._forward_pre_hooks) for n, m in model.named_modules()} == hooks
    assert model.config.to_dict() == config
    assert tiny_tok.padding_side == "right"


def test_gradient_checkpointing_is_switched_off_again(make_hp, tiny_tok):
    model = make_tiny("llama")
    hooks = {n: len(m._forward_hooks) for n, m in model.named_modules()}
    apply_dpo_to_model(model, tiny_tok, [], make_hp(gradient_checkpointing=True, num_pairs=8))
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert {n: len(m._forward_hooks) for n, m in model.named_modules()} == hooks


def test_copy_leaves_the_input_model_alone(make_hp, tiny_tok):
    model = make_tiny("llama")
    before = state_copy(model)
    out, _ = apply_dpo_to_model(model, tiny_tok, [], make_hp(num_pairs=8), copy=True)
    assert out is not model
    assert_same_state(model, before)
    assert any(not torch.equal(v, before[k]) for k, v in out.state_dict().items())


def test_a_failed_training_leaves_no_adapter(make_hp, tiny_tok, monkeypatch):
    import trl

    def boom(self, *args, **kwargs):
        raise RuntimeError("training failed")

    monkeypatch.setattr(trl.DPOTrainer, "train", boom)
    model = make_tiny("llama")
    before, grads = state_copy(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="training failed"):
        apply_dpo_to_model(model, tiny_tok, [], make_hp())
    assert not _has_lora(model)
    assert_same_state(model, before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert not model.training


# ---- (c) EasyEdit's restore ---------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["return_orig_weights", "keep_original_weight"])
def test_weights_copy_restores_bit_exactly(make_hp, tiny_tok, flag):
    model = make_tiny("llama")
    before = state_copy(model)
    out, weights_copy = apply_dpo_to_model(model, tiny_tok, [], make_hp(), **{flag: True})
    changed = {k for k, v in out.state_dict().items() if not torch.equal(v, before[k])}
    assert set(weights_copy) == changed  # exactly the parameters the merge changed
    for name, value in weights_copy.items():
        assert out.get_parameter(name).shape == value.shape
    params = dict(out.named_parameters())
    with torch.no_grad():  # EasyEdit's restore loop
        for name, value in weights_copy.items():
            params[name][...] = value
    assert_same_state(out, before)


def test_no_weights_copy_without_the_flags(make_hp, tiny_tok):
    _, weights_copy = apply_dpo_to_model(make_tiny("llama"), tiny_tok, [], make_hp(num_pairs=8))
    assert not weights_copy


# ---- (d) bad inputs -------------------------------------------------------------------------------

def test_unknown_target_module_is_named(make_hp, tiny_tok):
    model = make_tiny("llama")
    before = state_copy(model)
    with pytest.raises(ValueError, match=r"\['c_attn', 'w1'\] match no module.*q_proj"):
        apply_dpo_to_model(model, tiny_tok, [], make_hp(lora_target_modules=["q_proj", "c_attn", "w1"]))
    assert_same_state(model, before)


@pytest.mark.parametrize("key,value,match", [
    ("beta", 0.0, "beta must be > 0"),
    ("beta", -0.1, "beta must be > 0"),
    ("num_pairs", 0, "num_pairs must be >= 1"),
    ("learning_rate", 0.0, "learning_rate must be > 0"),
    ("lora_r", 0, "lora_r must be >= 1"),
    ("lora_dropout", 1.0, r"lora_dropout must be in \[0, 1\)"),
    ("loss_type", "dpo", r"loss_type='dpo' is not valid; choose one of \['sigmoid'"),
    ("lr_scheduler_type", "step", "lr_scheduler_type='step' is not valid"),
    ("max_prompt_length", 32, "max_prompt_length .* must be < max_seq_length"),
    ("lora_target_modules", [], "lora_target_modules must be a non-empty list"),
    ("lora_target_modules", ["q_proj", "lm_head"], "'lm_head' is not supported"),
    ("label_smoothing", 1.0, r"label_smoothing must be in \[0, 1\)"),
    ("preference", "random", r"preference='random' is not valid; choose one of \['as_given', 'shuffled'\]"),
])
def test_bad_hparams(make_hp, key, value, match):
    with pytest.raises(ValueError, match=match):
        make_hp(**{key: value})


def test_exo_pair_needs_label_smoothing(make_hp):
    with pytest.raises(ValueError, match="label_smoothing must be in \\(0, 1\\) for loss_type exo_pair"):
        make_hp(loss_type="exo_pair")
    make_hp(loss_type="exo_pair", label_smoothing=1e-3)


def test_wrong_field_type_is_named(make_hp):
    with pytest.raises(ValueError, match="num_pairs"):
        make_hp(num_pairs="ten")


def test_missing_data_file_is_named(make_hp, tiny_tok, tmp_path):
    missing = tmp_path / "nope.tsv"
    hp = make_hp(pairs={"path": str(missing), "chosen_column": "neutral1", "rejected_column": "toxic"})
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        apply_dpo_to_model(make_tiny("llama"), tiny_tok, [], hp)


def test_missing_column_is_named_with_the_valid_ones(make_hp, tiny_tok, pairs_tsv):
    hp = make_hp(pairs={"path": str(pairs_tsv), "chosen_column": "neutral2", "rejected_column": "toxic"})
    with pytest.raises(KeyError, match=r"pairs.tsv.*\['neutral2'\] not found; available columns: "
                                       r"\['toxic', 'neutral1'\]"):
        apply_dpo_to_model(make_tiny("llama"), tiny_tok, [], hp)


@pytest.mark.parametrize("pairs,match", [
    ({"chosen_column": "neutral1", "rejected_column": "toxic"}, "pairs needs `path`"),
    ({"path": "x.tsv", "chosen_column": "neutral1"}, "need both chosen_column and rejected_column"),
    ({"path": "x.tsv", "chosen_column": "a", "rejected_column": "b", "label_column": "c"}, "not both"),
    ({"path": "x.tsv", "response_column": "r", "label_column": "l", "group_column": "g"}, "chosen_values"),
    ({"path": "x.tsv", "chosen_column": "a", "rejected_column": "b", "promt_column": "p"}, "unknown key"),
    ({"path": "x.tsv", "chosen_column": "a", "rejected_column": "b", "prompt_mode": "first"},
     r"prompt_mode='first' is not valid; choose one of \['common_prefix', 'empty'\]"),
    ({"path": "x.tsv", "chosen_column": "a", "rejected_column": "b", "chat": True}, "chat: true needs a prompt_column"),
])
def test_bad_pairs_config(make_hp, pairs, match):
    with pytest.raises(ValueError, match=match):
        make_hp(pairs=pairs)


def test_identical_texts_leave_no_pair(make_hp, tiny_tok, tmp_path):
    path = tmp_path / "same.tsv"
    path.write_text("toxic\tneutral1\nyou are kind\tyou are kind\n")
    hp = make_hp(pairs={"path": str(path), "chosen_column": "neutral1", "rejected_column": "toxic"})
    with pytest.raises(ValueError, match="no preference pair left"):
        apply_dpo_to_model(make_tiny("llama"), tiny_tok, [], hp)


# ---- pair construction -------------------------------------------------------------------------------

def test_common_prefix_split():
    assert _split_common_prefix("you are kind", "you are stupid") == ("you are", " kind", " stupid")
    assert _split_common_prefix("He was brave", "he had balls") == ("", "He was brave", "he had balls")
    assert _split_common_prefix("you", "you idiot") == ("", "you", "you idiot")  # a completion never empty
    assert _split_common_prefix("a b c", "a b") == ("a", " b c", " b")


def test_pairs_rebuild_the_texts_and_extend_stably(make_hp, tiny_tok):
    hp = make_hp()
    pairs, _ = load_preference_pairs(hp.pairs, 10, hp.seed, None, tiny_tok)
    expected = set(zip(NEUTRAL, TOXIC))
    for p in pairs:
        prompt = "" if p["prompt"] == tiny_tok.eos_token else p["prompt"]  # no BOS: EOS text as empty prompt
        assert (prompt + p["chosen"], prompt + p["rejected"]) in expected
    assert load_preference_pairs(hp.pairs, 4, hp.seed, None, tiny_tok)[0] == pairs[:4]
    assert load_preference_pairs(hp.pairs, 10, hp.seed + 1, None, tiny_tok)[0] != pairs
    empty, _ = load_preference_pairs({**hp.pairs, "prompt_mode": "empty"}, 10, hp.seed, None, tiny_tok)
    assert {(p["prompt"], p["chosen"], p["rejected"]) for p in empty} == {("[EOS]", n, t) for n, t in expected}


def test_grouped_labelled_responses(tmp_path, tiny_tok, make_hp):
    path = tmp_path / "judged.jsonl"
    rows = [{"goal": g, "prompt": f"attack {i}", "response": r, "jailbroken": j}
            for i, (g, r, j) in enumerate([("g1", "i can not", False), ("g1", "sure here 1", True),
                                           ("g1", "sure here 2", True), ("g2", "no way", False),
                                           ("g2", "sure here 3", True), ("g3", "sure here 4", True)])]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = {"path": str(path), "response_column": "response", "label_column": "jailbroken",
              "chosen_values": [False], "group_column": "goal", "prompt_column": "goal"}
    pairs, _ = load_preference_pairs(config, 10, 0, None, tiny_tok)
    got = sorted((p["prompt"], p["chosen"], p["rejected"]) for p in pairs)
    assert got == [("g1\n", "i can not", "sure here 1"), ("g1\n", "i can not", "sure here 2"),
                   ("g2\n", "no way", "sure here 3")]  # g3 has no refusal: no pair
    chat, _ = load_preference_pairs({**config, "chat": True}, 10, 0, None, tiny_tok)
    assert chat[0]["prompt"][0]["role"] == "user" and chat[0]["chosen"][0]["role"] == "assistant"
    make_hp(pairs=config)  # accepted by the hparams too


@pytest.mark.skipif(not (DATA_DIR / "jailbreakbench" / "jbb_judged_responses.jsonl").is_file(),
                    reason="offline JailbreakBench data not present")
def test_jailbreakbench_pairs_from_the_offline_data():
    config = {"path": "jailbreakbench/jbb_judged_responses.jsonl", "response_column": "response",
              "label_column": "jailbroken", "chosen_values": [False], "group_column": "goal",
              "prompt_column": "goal"}
    pairs, _ = load_preference_pairs(config, 10_000, 0, str(DATA_DIR), None)
    assert 800 < len(pairs) <= 940  # every jailbroken answer whose goal also has a refusal
    assert all(p["chosen"] != p["rejected"] for p in pairs)


# ---- (e) the YAMLs and the registry ----------------------------------------------------------------------

def test_yamls_present():
    assert {p.stem for p in YAMLS} >= {"smollm2-135m", "gemma3-270m", "llama-7b", "llama2-7b-chat", "mistral-7b"}


@pytest.mark.parametrize("path", YAMLS, ids=[p.stem for p in YAMLS])
def test_yaml_loads(path):
    hp = DPOHyperParams.from_hparams(path)
    assert hp.alg_name == "DPO" and hp.num_pairs >= 1
    assert set(hp.lora_target_modules) <= set(DEFAULT_TARGETS)
    pairs_path = DATA_DIR / hp.pairs["path"]
    if DATA_DIR.is_dir():
        assert pairs_path.is_file(), pairs_path


def test_yaml_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("alg_name: DPO\nmodel_name: smollm2-135m\nbetta: 0.1\n")
    with pytest.raises(ValueError, match="unknown key 'betta' \\(did you mean 'beta'\\?\\)"):
        DPOHyperParams.from_hparams(path)


def test_registered():
    from surgery_editor.methods import get_algorithm

    algorithm = get_algorithm("DPO")
    assert algorithm.hparams_cls is DPOHyperParams and algorithm.apply is apply_dpo_to_model
    assert algorithm.controls == {"DPO_shuffled": {"preference": "shuffled"}} and not algorithm.per_instance(None)
    assert set(algorithm.info_keys) <= set(DPOHyperParams.field_names())


# ---- the embedded model ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_short_training(tmp_path):
    from surgery_editor.models import load_model

    hp = DPOHyperParams.from_hparams(REPO / "hparams" / "DPO" / "smollm2-135m.yaml")
    hp.num_pairs, hp.per_device_batch_size, hp.data_dir = 16, 8, str(DATA_DIR)
    model, tok = load_model("smollm2-135m")
    before = state_copy(model)
    pairs, _ = load_preference_pairs(hp.pairs, hp.num_pairs, hp.seed, hp.data_dir, tok)
    margin_before = _margin(model, tok, pairs)
    info = {}
    out, weights_copy = apply_dpo_to_model(model, tok, [], hp, keep_original_weight=True, info=info)
    assert out is model and info["steps"] == 2 and not _has_lora(model)
    assert _margin(model, tok, pairs) > margin_before
    assert len(weights_copy) == 30 * 7
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights_copy.items():
            params[name][...] = value
    assert_same_state(model, before)


def test_shuffled_control_swaps_exactly_half_the_pairs():
    from surgery_editor.methods.DPO.train import shuffle_preferences

    pairs = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(9)]
    out = shuffle_preferences(pairs, seed=0)
    swapped = [o["chosen"].startswith("bad") for o in out]
    assert sum(swapped) == 4  # len // 2
    for p, o, s in zip(pairs, out, swapped):
        assert (o["chosen"], o["rejected"]) == ((p["rejected"], p["chosen"]) if s else (p["chosen"], p["rejected"]))
    assert shuffle_preferences(pairs, seed=0) == out and shuffle_preferences(pairs, seed=1) != out
    assert pairs[0]["chosen"] == "good 0"  # input untouched


def test_shuffled_control_is_registered():
    from surgery_editor.methods import get_algorithm

    assert get_algorithm("DPO").controls == {"DPO_shuffled": {"preference": "shuffled"}}

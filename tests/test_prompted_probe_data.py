"""Probe data whose texts are answers to prompts (``prompt_field``): loading keeps each answer
with its prompt, :meth:`LabelledTexts.for_model` joins them as the model reads a conversation,
and ModelSurgery trains its probe on the joined texts."""

import copy
import json

import pytest

from surgery_editor.data import LabelledTexts, ProbeDataConfig, load_probe_texts
from surgery_editor.methods.ModelSurgery.surgery import probe_texts

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>"
            "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture
def answers(tmp_path):
    """Rows whose answer names its prompt, so that a misaligned pairing shows."""
    rows = [{"goal": f"request {i}", "response": f"answer to request {i}", "jailbroken": i % 3 == 0}
            for i in range(30)]
    rows.append({"goal": "", "response": "answer to nothing", "jailbroken": True})  # no prompt: dropped
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(path, **kw):
    return {"path": str(path), "prompt_field": "goal", "text_field": "response", "label_field": "jailbroken",
            "positive_values": [True], **kw}


@pytest.fixture
def chat_tok(tiny_tok):
    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = TEMPLATE
    tok.bos_token = "[EOS]"  # a token of the tiny vocabulary, standing in for a BOS
    return tok


def test_answers_stay_with_their_prompts_after_shuffle_and_limit(answers):
    data = load_probe_texts(_cfg(answers, limit=12, seed=3))
    assert len(data.texts) == len(data.prompts) == 12
    assert data.labels.flags.writeable  # torch.from_numpy takes it without a warning
    for prompt, text, label in zip(data.prompts, data.texts, data.labels.tolist()):
        assert text == f"answer to {prompt}"
        assert label == int(int(prompt.split()[-1]) % 3 == 0)


def test_without_template_the_answer_follows_a_blank_line(answers, tiny_tok):
    data = load_probe_texts(_cfg(answers, shuffle=False)).for_model(tiny_tok)
    assert data.prompts is None and data.texts[0] == "request 0\n\nanswer to request 0"
    assert data.labels.tolist()[:3] == [1, 0, 0]


@pytest.mark.parametrize("adds_bos", [False, True])
def test_template_joins_user_turn_and_answer_with_one_bos(answers, chat_tok, adds_bos):
    from tokenizers.processors import TemplateProcessing

    if adds_bos:  # a tokenizer that puts the BOS itself: the template's own is dropped
        chat_tok._tokenizer.post_processor = TemplateProcessing(
            single="[EOS] $A", special_tokens=[("[EOS]", chat_tok.convert_tokens_to_ids("[EOS]"))])
        assert chat_tok("hello").input_ids[0] == chat_tok.bos_token_id
    data = load_probe_texts(_cfg(answers, shuffle=False))
    out = data.for_model(chat_tok).texts[1]
    body = "<user>request 1</user><assistant>answer to request 1</assistant>"
    assert out == (body if adds_bos else chat_tok.bos_token + body)
    assert data.for_model(chat_tok).content_hash() != data.content_hash()


def test_chat_false_ignores_the_template(answers, chat_tok):
    data = load_probe_texts(_cfg(answers, shuffle=False, chat=False)).for_model(chat_tok)
    assert data.texts[0] == "request 0\n\nanswer to request 0"


def test_chat_true_without_template_is_an_error(answers, tiny_tok):
    data = load_probe_texts(_cfg(answers, chat=True))
    with pytest.raises(ValueError, match=r"answers\.jsonl: probe_data chat: true, but the tokenizer has no chat "
                                         r"template; use chat: auto or false"):
        data.for_model(tiny_tok)


def test_hash_covers_the_prompts():
    def texts(prompt):
        return LabelledTexts(texts=["a", "b"], labels=__import__("numpy").array([1, 0]), source="s",
                             prompts=[prompt, "q"])
    assert texts("p").content_hash() != texts("other").content_hash()


@pytest.mark.parametrize("extra, message", [
    ({"positive_column": "a", "negative_column": "b", "text_field": None, "label_field": None},
     "prefix_field, prompt_field and label_threshold belong to labelled rows"),
    ({"prefix_field": "goal"}, "give prefix_field .* or prompt_field .*, not both"),
    ({"chat": "sometimes"}, "chat must be true, false or 'auto', got 'sometimes'"),
])
def test_config_errors_name_the_file_and_key(answers, extra, message):
    cfg = {k: v for k, v in {**_cfg(answers), **extra}.items() if v is not None}
    with pytest.raises(ValueError, match=r"probe_data for '.*answers\.jsonl': " + message):
        ProbeDataConfig.from_dict(cfg)


def test_missing_prompt_column_lists_columns(answers):
    with pytest.raises(KeyError, match=r"\['question'\] not found; available columns"):
        load_probe_texts({**_cfg(answers), "prompt_field": "question"})


def test_model_surgery_probe_reads_the_joined_texts(answers, hp_factory, chat_tok):
    hp = hp_factory(probe_data=_cfg(answers, shuffle=False), probe_val_fraction=0.2)
    raw, joined = probe_texts(hp), probe_texts(hp, chat_tok)
    assert raw.texts[0] == "answer to request 0"
    assert joined.texts[0].endswith("<user>request 0</user><assistant>answer to request 0</assistant>")
    assert joined.labels.tolist() == raw.labels.tolist()

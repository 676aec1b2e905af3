"""Preference pairs (prompt, chosen, rejected) for DPO, from a data-set config (``pairs:``).

Two shapes of config:

* one pair per row, two text columns (ParaDetox: a toxic sentence and its neutral rewrite)::

      path: paradetox/paradetox.tsv
      chosen_column: neutral1        # the preferred text
      rejected_column: toxic         # the dispreferred text
      prompt_column: null            # optional; none in ParaDetox, see prompt_mode

* one response per row, labelled, grouped by request (JailbreakBench's judged responses:
  every row is an attack prompt for one of 100 behaviours (``goal``), the target model's
  ``response`` and the judge's ``jailbroken`` label: 700 refusals and 940 harmful answers,
  938 of them to one of the 102 goals that also have a refusal, so 938 pairs)::

      path: jailbreakbench/jbb_judged_responses.jsonl
      response_column: response
      label_column: jailbroken
      chosen_values: [false]         # label values of the preferred responses (refusals)
      group_column: goal             # pairs are formed within a group
      prompt_column: goal            # the prompt of a pair (taken from its rejected row)
      chat: true                     # render prompt/response with the tokenizer's chat template

  Within each group, every rejected row (label not in ``chosen_values``) is paired with a
  chosen row of the same group, going round the group's (shuffled) chosen rows, so each
  harmful answer is used once and refusals are reused when a group has fewer of them.

Prompts. With ``prompt_column`` the prompt is that column's text (raw mode: the prompt plus
``separator``, then the response; ``chat: true``: a user turn and an assistant turn through the
tokenizer's chat template, trl's conversational format). Without one (ParaDetox) there is no
prompt; ``prompt_mode: common_prefix`` (default) takes the two texts' longest common prefix of
whole words as the prompt and the two remainders (with their leading space) as the
completions, so prompt + completion is each original text exactly; ``prompt_mode: empty`` uses
the whole texts as completions. Under the sigmoid DPO loss both give the same objective: the
log-probability of a shared prefix is the same in the chosen and the rejected sequence, under
the policy and the reference alike, and cancels in the margin. ``common_prefix`` just keeps the
shared words out of the completion (they only matter for length-normalised losses such as
``ipo``). When the prompt is empty, the first completion token would have no context and go
unscored, so the prompt becomes the tokenizer's BOS token text when its tokenizer does not
add one itself (EOS text when it has no BOS; ``empty_prompt`` overrides).

Rows whose texts are missing or blank, and pairs whose two texts are identical, are dropped.
The pairs are shuffled with ``seed`` and the first ``num_pairs`` kept, so a larger
``num_pairs`` with the same seed extends, never reorders, a smaller one's pairs.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ...data import _label_key, _require_columns, checked_data_config, load_table

logger = logging.getLogger(__name__)

PROMPT_MODES = ("common_prefix", "empty")


@dataclass
class PairDataConfig:
    path: str = field(metadata={"help": "file (csv/tsv/jsonl/json) or hub data-set id"})
    chosen_column: Optional[str] = field(default=None, metadata={"help": "pair rows: column of the preferred text"})
    rejected_column: Optional[str] = field(default=None,
                                           metadata={"help": "pair rows: column of the dispreferred text"})
    response_column: Optional[str] = field(default=None, metadata={"help": "labelled rows: column of the response"})
    label_column: Optional[str] = field(default=None, metadata={"help": "labelled rows: column of the label"})
    chosen_values: List[Any] = field(default_factory=list,
                                     metadata={"help": "labelled rows: label values of preferred responses"})
    group_column: Optional[str] = field(default=None,
                                        metadata={"help": "labelled rows: pairs are formed within equal values"})
    prompt_column: Optional[str] = field(default=None, metadata={"help": "column of the prompt (optional)"})
    prompt_mode: str = field(default="common_prefix",
                             metadata={"help": "no prompt column: 'common_prefix' or 'empty' (see module doc)"})
    empty_prompt: Optional[str] = field(default=None,
                                        metadata={"help": "text used for an empty prompt (default: BOS, see doc)"})
    separator: str = field(default="\n",
                           metadata={"help": "raw mode with a prompt column: text between prompt and response"})
    chat: bool = field(default=False, metadata={"help": "render prompt/response with the tokenizer's chat template"})
    split: str = field(default="train", metadata={"help": "hub data sets: split to load"})

    def __post_init__(self) -> None:
        from ...hparams import check_field_types

        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, value in check_field_types(type(self), values, what="pairs").items():
            setattr(self, key, value)
        where = f"pairs for {self.path!r}"
        pair = self.chosen_column is not None or self.rejected_column is not None
        rows = self.response_column is not None or self.label_column is not None or self.group_column is not None
        if pair == rows:
            raise ValueError(
                f"{where}: give either chosen_column + rejected_column (one pair per row) or response_column + "
                "label_column + chosen_values + group_column (labelled responses grouped by request), not both and "
                "not neither")
        if pair and (self.chosen_column is None or self.rejected_column is None):
            raise ValueError(f"{where}: pair rows need both chosen_column and rejected_column")
        if rows:
            missing = [k for k in ("response_column", "label_column", "group_column") if getattr(self, k) is None]
            if missing or not self.chosen_values:
                missing += [] if self.chosen_values else ["chosen_values"]
                raise ValueError(f"{where}: labelled rows need response_column, label_column, chosen_values and "
                                 f"group_column; missing: {missing}")
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"pairs.prompt_mode={self.prompt_mode!r} is not valid; choose one of {list(PROMPT_MODES)}")
        if self.chat and self.prompt_column is None:
            raise ValueError(f"{where}: chat: true needs a prompt_column (the user turn)")

    @classmethod
    def from_dict(cls, config: Dict[str, Any]) -> "PairDataConfig":
        return checked_data_config(cls, config, "pairs")


def _text(value: Any) -> Optional[str]:
    return value if isinstance(value, str) and value.strip() else None


def _split_common_prefix(a: str, b: str):
    """``(prefix, rest_a, rest_b)``: the longest common prefix of whole words (split on single
    spaces) and the remainders, each starting with the space that followed the prefix."""
    wa, wb = a.split(" "), b.split(" ")
    n = 0
    while n < min(len(wa), len(wb)) - 1 and wa[n] == wb[n]:
        n += 1  # keep at least one word in each completion
    if n == 0:
        return "", a, b
    return " ".join(wa[:n]), " " + " ".join(wa[n:]), " " + " ".join(wb[n:])


def default_empty_prompt(tok) -> str:
    """``""`` when the tokenizer adds a BOS token itself; else the BOS (or EOS) token text."""
    if tok is None:
        return ""
    try:
        adds = len(tok("", add_special_tokens=True)["input_ids"]) > 0
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode "" adds nothing
        adds = False
    if adds:
        return ""
    return tok.bos_token or tok.eos_token or ""


def _raw_pairs(cfg: PairDataConfig, frame) -> List[Dict[str, str]]:
    """``[{prompt, chosen, rejected}]`` before prompt handling (prompt may be None)."""
    out: List[Dict[str, str]] = []
    records = frame.to_dict("records")
    if cfg.chosen_column is not None:
        for row in records:
            chosen, rejected = _text(row[cfg.chosen_column]), _text(row[cfg.rejected_column])
            prompt = _text(row[cfg.prompt_column]) if cfg.prompt_column else None
            if chosen is None or rejected is None or (cfg.prompt_column and prompt is None):
                continue
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return out
    positive = {_label_key(v) for v in cfg.chosen_values} - {None}
    groups: Dict[Any, Dict[str, list]] = {}
    for row in records:
        response, label = _text(row[cfg.response_column]), _label_key(row[cfg.label_column])
        prompt = _text(row[cfg.prompt_column]) if cfg.prompt_column else None
        if response is None or label is None or (cfg.prompt_column and prompt is None):
            continue
        group = groups.setdefault(str(row[cfg.group_column]), {"chosen": [], "rejected": []})
        group["chosen" if label in positive else "rejected"].append((prompt, response))
    for group in groups.values():
        chosen = group["chosen"]
        if not chosen:
            continue
        for i, (prompt, rejected) in enumerate(group["rejected"]):
            out.append({"prompt": prompt, "chosen": chosen[i % len(chosen)][1], "rejected": rejected})
    return out


def load_preference_pairs(config: Dict[str, Any] | PairDataConfig, num_pairs: int, seed: int = 0,
                          data_dir: Optional[str] = None, tok=None) -> tuple[List[Dict[str, Any]], str]:
    """``(pairs, source)``: up to ``num_pairs`` dicts with ``prompt``, ``chosen``, ``rejected``
    (strings, or chat message lists with ``chat: true``), shuffled with ``seed``. ``tok``
    decides the empty-prompt text (see the module doc). Errors name the file and the missing
    column with the available ones, or say why no pair is left."""
    cfg = config if isinstance(config, PairDataConfig) else PairDataConfig.from_dict(dict(config))
    frame, source = load_table(cfg.path, data_dir, cfg.split, what="pairs path")
    columns = [c for c in (cfg.chosen_column, cfg.rejected_column, cfg.response_column, cfg.label_column,
                           cfg.group_column, cfg.prompt_column) if c is not None]
    _require_columns(frame, list(dict.fromkeys(columns)), source)
    # Shuffle the rows first (groups' chosen rows rotate in this order), then the pairs.
    rng = random.Random(seed)
    records_order = list(range(len(frame)))
    rng.shuffle(records_order)
    raw = _raw_pairs(cfg, frame.iloc[records_order])
    raw = [p for p in raw if p["chosen"].strip() != p["rejected"].strip()]
    if not raw:
        what = ("rows with both texts present and different" if cfg.chosen_column else
                f"groups ({cfg.group_column!r}) with both a chosen (label in {cfg.chosen_values!r}) and a rejected "
                "response")
        raise ValueError(f"{source}: no preference pair left: the data has no {what}")
    rng.shuffle(raw)
    if len(raw) < num_pairs:
        logger.warning("%s: only %d preference pairs available, fewer than num_pairs=%d; using all", source,
                       len(raw), num_pairs)
    raw = raw[:num_pairs]
    empty = cfg.empty_prompt if cfg.empty_prompt is not None else default_empty_prompt(tok)
    pairs: List[Dict[str, Any]] = []
    for p in raw:
        if p["prompt"] is not None:
            if cfg.chat:
                pairs.append({"prompt": [{"role": "user", "content": p["prompt"]}],
                              "chosen": [{"role": "assistant", "content": p["chosen"]}],
                              "rejected": [{"role": "assistant", "content": p["rejected"]}]})
            else:
                pairs.append({"prompt": p["prompt"] + cfg.separator, "chosen": p["chosen"], "rejected": p["rejected"]})
            continue
        prefix, chosen, rejected = ("", p["chosen"], p["rejected"])
        if cfg.prompt_mode == "common_prefix":
            prefix, chosen, rejected = _split_common_prefix(p["chosen"], p["rejected"])
        if prefix:
            pairs.append({"prompt": prefix, "chosen": chosen, "rejected": rejected})
        else:
            pairs.append({"prompt": empty, "chosen": chosen, "rejected": rejected})
    logger.info("preference pairs from %s: %d", source, len(pairs))
    return pairs, source

"""Dataset loader for the offline lm-eval tasks in this folder (``custom_dataset: !function
utils.load_local``).

lm-eval calls it with the task's ``dataset_kwargs`` plus its metadata (where ``data_dir``
comes from: ``TaskManager(metadata={"data_dir": ...})`` or ``lm_eval --metadata``). Each
record is parsed here, so a malformed one is reported with its file and line.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Dict, List, Optional

import datasets

from surgery_editor.data import resolve_data_dir, resolve_path

_OPTION = re.compile(r"^([A-Z])\.\s?(.*)$")


def _field(record: Dict[str, Any], name: str, where: str) -> Any:
    if not isinstance(record, dict) or record.get(name) is None:
        raise ValueError(f"{where}: missing field {name!r}")
    return record[name]


def parse_boolq(record: Dict[str, Any], where: str) -> Dict[str, Any]:
    """passage, question, answer "True"/"False" -> + ``gold`` (1 = yes)."""
    answer = str(_field(record, "answer", where)).strip().lower()
    if answer not in ("true", "false"):
        raise ValueError(f"{where}: field 'answer' must be True or False, got {record['answer']!r}")
    return {"passage": str(_field(record, "passage", where)), "question": str(_field(record, "question", where)),
            "gold": int(answer == "true")}


def parse_lettered(record: Dict[str, Any], where: str) -> Dict[str, Any]:
    """question, options "A. x\\nB. y", answer "B. y" -> question, ``choices`` (texts),
    ``letters``, ``gold`` (index of the answer's letter)."""
    letters, texts = [], []
    for line in str(_field(record, "options", where)).splitlines():
        m = _OPTION.match(line.strip())
        if m:
            letters.append(m.group(1))
            texts.append(m.group(2).strip())
    if len(texts) < 2:
        raise ValueError(f"{where}: field 'options' has fewer than 2 'A. ...' lines: {record['options']!r}")
    answer = str(_field(record, "answer", where)).strip()
    letter = answer[:1]
    if not (len(answer) == 1 or answer[1:2] == ".") or letter not in letters:
        raise ValueError(f"{where}: field 'answer' {answer!r} is not one of the options {letters}")
    return {"question": str(_field(record, "question", where)).strip(), "choices": texts, "letters": letters,
            "gold": letters.index(letter)}


def parse_qa(record: Dict[str, Any], where: str) -> Dict[str, Any]:
    """question, answer (GSM8K: worked solution ending in ``#### <number>``)."""
    return {"question": str(_field(record, "question", where)), "answer": str(_field(record, "answer", where))}


def parse_passage(record: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Only the ``passage`` text (perplexity)."""
    return {"passage": str(_field(record, "passage", where))}


FORMATS: Dict[str, Callable[[Dict[str, Any], str], Dict[str, Any]]] = {
    "boolq": parse_boolq, "lettered": parse_lettered, "qa": parse_qa, "passage": parse_passage,
}


def read_records(data_file: str, data_dir: Optional[str], fmt: str) -> List[Dict[str, Any]]:
    if fmt not in FORMATS:
        raise ValueError(f"dataset_kwargs.format: unknown format {fmt!r}; valid: {sorted(FORMATS)}")
    local = resolve_path(data_file, data_dir)
    if local is None:
        raise FileNotFoundError(f"dataset_kwargs.data_file: {data_file!r} not found (tried it as given and under "
                                f"{resolve_data_dir(data_dir)}); set metadata data_dir to the offline data folder")
    parse = FORMATS[fmt]
    records = []
    with open(local, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{local}: line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not JSON: {e}") from None
            records.append(parse(record, where))
    if not records:
        raise ValueError(f"{local}: no records")
    return records


def load_local(data_file: str, format: str, data_dir: Optional[str] = None, first: Optional[int] = None,
               last: Optional[int] = None, fewshot_last: Optional[int] = None, unseen_after: Optional[int] = None,
               **_metadata: Any) -> datasets.DatasetDict:
    """The ``test`` split is the file's records (only the ``first`` N, or only the ``last`` N);
    with ``fewshot_last`` the last N records form a ``train`` split for few-shot examples
    and are left out of ``test``; with ``unseen_after`` N it is the distinct parsed records
    after the first N that none of the first N has (BoolQ repeats passages: this keeps the
    perplexity texts out of the BoolQ task's ``first: N``). Doc ids are positions in the test
    split, which for ``first``/``fewshot_last`` are the file's record numbers."""
    if sum(x is not None for x in (first, last, unseen_after)) > 1:
        raise ValueError("dataset_kwargs: give at most one of 'first', 'last' and 'unseen_after'")
    records = read_records(data_file, data_dir, format)
    if unseen_after is not None:
        seen = {json.dumps(r, sort_keys=True) for r in records[:unseen_after]}
        kept = []
        for r in records[unseen_after:]:
            key = json.dumps(r, sort_keys=True)
            if key not in seen:
                seen.add(key)
                kept.append(r)
        records = kept
    splits: Dict[str, List[Dict[str, Any]]] = {}
    if fewshot_last:
        if fewshot_last >= len(records):
            raise ValueError(f"dataset_kwargs.fewshot_last={fewshot_last} leaves no test records in {data_file!r} "
                             f"({len(records)} records)")
        splits["train"] = records[-fewshot_last:]
        records = records[:-fewshot_last]
    if first is not None:
        records = records[:first]
    if last is not None:
        records = records[-last:]
    splits["test"] = records
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})

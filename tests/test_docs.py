"""The documentation's links and quoted paths point at files that exist.

Checked files: README.md and every docs/*.md (the pages, not the generated docs/results/**). A
docs/_*.md file is a draft of README.md text: its links are resolved from the repository root,
where they will stand.

1. Every relative Markdown link and image target (``[text](target)``, ``![alt](target)``,
   ``[label]: target`` definitions, HTML ``src=``/``href=``) exists, resolved against the file's
   own folder; a ``#anchor`` is stripped first (a bare ``#anchor`` is not checked), and
   http(s)/mailto links are skipped. Links written inside code (inline or fenced) are not links.
2. Every ``hparams/...`` or ``docs/results/...`` path quoted in code (inline backticks or a
   fenced block) exists in the repository, read from the repository root. A path with a
   placeholder or a glob (``<model>``, ``*``, ``?``, ``[``, ``{``, ``$``, ``...``, ``|``) is
   skipped: it names a family of files, not one. An ``hparams/`` path may leave out ``.yaml``,
   as ``from_hparams`` appends it.
3. Links and quoted paths under docs/results name only the published files that keep their
   names (Markdown, CSV, PNG files, or folders), never a run dir's results.jsonl, config.yaml,
   run.log, metrics.json or .hydra files, which may be compacted away.

Each failure names the file and the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]{0,3}(?P<close>\1)[ \t]*$|\Z)", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
# [text](target "title") and ![alt](target); the text may hold one level of brackets and wrap lines.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>\n]*>|[^()\s]+(?:\([^()\s]*\)[^()\s]*)*)"
                  r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)", re.S)
REF_DEF = re.compile(r"^[ \t]{0,3}\[[^\]\n]+\]:[ \t]*(<[^>\n]*>|\S+)", re.M)
HTML_ATTR = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
# A repository path in code: hparams/... or docs/results/..., not part of a longer path or word.
CODE_PATH = re.compile(r"(?<![\w./~-])(hparams/|docs/results(?:/|(?![\w.-])))([^\s`'\"(),;]*)")
PLACEHOLDER = re.compile(r"[<>*?\[\]{}$|]|\.\.\.")
UNSTABLE = re.compile(r"(^|/)(results\.jsonl|config\.yaml|run\.log|metrics\.json|multirun[^/]*\.yaml|\.hydra)(/|$)")
STABLE_SUFFIXES = (".md", ".csv", ".png")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


def doc_files(root: Path = REPO) -> List[Path]:
    """README.md and docs/*.md (docs/results/** is generated and not checked)."""
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    return files + sorted((root / "docs").glob("*.md"))


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _blank(text: str, start: int, end: int) -> str:
    """``text`` with [start, end) replaced by spaces, newlines kept (offsets and lines stay)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def split_code(text: str):
    """(prose, code, unclosed): ``prose`` is ``text`` with fenced blocks and inline code blanked
    out; ``code`` lists (offset, code text) of every fenced block and inline code span;
    ``unclosed`` the offsets of fences never closed (they swallow the rest of the file)."""
    code, unclosed = [], []
    for m in FENCE.finditer(text):
        if m.group("close") is None:
            unclosed.append(m.start())
        code.append((m.start(), m.group(0)))
        text = _blank(text, m.start(), m.end())
    for m in INLINE_CODE.finditer(text):
        code.append((m.start(2), m.group(2)))
        text = _blank(text, m.start(), m.end())
    return text, code, unclosed


def _starts_block(text: str, offset: int) -> bool:
    """The line at ``offset`` starts the text, follows a blank line or another definition."""
    before = text[:offset].rstrip(" \t")
    if not before:
        return True
    previous = before[:-1].rsplit("\n", 1)[-1] if before.endswith("\n") else None
    return previous is not None and (not previous.strip() or bool(REF_DEF.match(previous)))


def link_targets(prose: str) -> Iterator[tuple]:
    """(offset, target) of every link, image, link definition and HTML src/href in ``prose``."""
    for rx in (LINK, REF_DEF, HTML_ATTR):
        for m in rx.finditer(prose):
            if rx is REF_DEF and not _starts_block(prose, m.start()):
                continue  # "[label]: x" inside a paragraph is text, not a link definition
            target = m.group(1).strip()
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1].strip()
            yield m.start(1), target


def _is_external(target: str) -> bool:
    return bool(re.match(r"(?i)^(https?:|mailto:|ftp:|//)", target))


def _published_only(rel: str) -> bool:
    """A docs/results path names a file that keeps its name, or a folder."""
    rel = rel.rstrip("/")
    if UNSTABLE.search(rel):
        return False
    name = rel.rsplit("/", 1)[-1]
    return "." not in name or name.endswith(STABLE_SUFFIXES)


def check_file(path: Path, root: Path = REPO) -> List[Problem]:
    text = path.read_text(encoding="utf-8")
    rel_file = path.relative_to(root).as_posix()
    prose, code, unclosed = split_code(text)
    problems = [Problem(rel_file, _line(text, offset), "code fence never closed: the rest of the file renders as "
                                                      "code and its links are not checked") for offset in unclosed]
    for offset, target in link_targets(prose):
        line = _line(text, offset)
        if not target or target.startswith("#") or _is_external(target):
            continue
        file_part = unquote(target.split("#", 1)[0].split("?", 1)[0])
        base = root if path.name.startswith("_") else path.parent  # a README draft links from the root
        resolved = (root / file_part.lstrip("/")) if file_part.startswith("/") else (base / file_part)
        if not resolved.exists():
            problems.append(Problem(rel_file, line, f"link target {target!r} does not exist"))
            continue
        try:
            in_repo = resolved.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            problems.append(Problem(rel_file, line, f"link target {target!r} is outside the repository"))
            continue
        if in_repo.startswith("docs/results") and not _published_only(in_repo):
            problems.append(Problem(rel_file, line, f"link target {target!r} is a run file that may be compacted "
                                                    "away; link the report.md / report.csv / plot or the folder"))
    for start, snippet in code:
        for m in CODE_PATH.finditer(snippet):
            quoted = (m.group(1) + m.group(2)).rstrip(".:")
            line = _line(text, start + m.start())
            if PLACEHOLDER.search(quoted):
                continue
            candidate = root / quoted
            exists = candidate.exists() or (quoted.startswith("hparams/") and candidate.with_name(
                candidate.name + ".yaml").is_file())
            if not exists:
                problems.append(Problem(rel_file, line, f"quoted path {quoted!r} does not exist in the repository"))
            elif quoted.startswith("docs/results") and not _published_only(quoted):
                problems.append(Problem(rel_file, line, f"quoted path {quoted!r} is a run file that may be "
                                                        "compacted away; name the report or the folder"))
    return problems


def check_docs(root: Path = REPO) -> List[Problem]:
    return [p for f in doc_files(root) for p in check_file(f, root)]


def test_readme_and_docs_pages_links_and_paths_exist():
    files = doc_files()
    assert any(f.name == "README.md" for f in files), "README.md not found"
    problems = check_docs()
    assert not problems, f"{len(problems)} broken link(s) or path(s) in the docs:\n" + "\n".join(map(str, problems))


def test_the_checker_finds_what_is_broken_and_skips_what_is_not(tmp_path):
    (tmp_path / "hparams" / "DPO").mkdir(parents=True)
    (tmp_path / "hparams" / "DPO" / "m.yaml").write_text("alg_name: DPO\n")
    run = tmp_path / "docs" / "results" / "r" / "run1"
    run.mkdir(parents=True)
    for name in ("report.md", "plot.png", "run1/results.jsonl"):
        (tmp_path / "docs" / "results" / "r" / name).write_text("x")
    (tmp_path / "docs" / "page.md").write_text(
        "[ok](../hparams/DPO/m.yaml) [anchor](#top) [web](https://example.org/x) [mail](mailto:a@b.c)\n"
        "![plot](results/r/plot.png) [wrapped\ntext](results/r/report.md#sec) [dir](results/r/)\n"
        "[gone](missing.md#a) `hparams/DPO/m` `hparams/DPO/<model>.yaml` `docs/results/r/*/x.jsonl`\n"
        "`hparams/DINM/m.yaml` [run](results/r/run1/results.jsonl) `docs/results/r/run1`\n"
        "```python\nx = y[0](1)  # not a link\nload('hparams/steer/m.yaml')\n```\n"
        "\n[ref]: ./nowhere.md\n\nA value\n[95% CI]: in a paragraph, not a definition\n<img src=\"results/r/none.png\">\n"
        "```\n[hidden](hidden.md)\n")
    (tmp_path / "README.md").write_text("See [the page](docs/page.md) and `docs/results/r/report.md`.\n")
    (tmp_path / "docs" / "_draft.md").write_text("[page](docs/page.md) [wrong](page.md)\n")
    found = sorted(str(p) for p in check_docs(tmp_path))
    assert found == sorted([
        "docs/_draft.md:1: link target 'page.md' does not exist",
        "docs/page.md:4: link target 'missing.md#a' does not exist",
        "docs/page.md:5: quoted path 'hparams/DINM/m.yaml' does not exist in the repository",
        "docs/page.md:5: link target 'results/r/run1/results.jsonl' is a run file that may be compacted away; "
        "link the report.md / report.csv / plot or the folder",
        "docs/page.md:8: quoted path 'hparams/steer/m.yaml' does not exist in the repository",
        "docs/page.md:11: link target './nowhere.md' does not exist",
        "docs/page.md:15: link target 'results/r/none.png' does not exist",
        "docs/page.md:16: code fence never closed: the rest of the file renders as code and its links are not checked",
    ]), found


@pytest.mark.parametrize("text,targets", [
    ("[a](b.md) and ![c](d/e.png \"title\")", ["b.md", "d/e.png"]),
    ("[a [nested]](x.md) `[not](code.md)`", ["x.md"]),
    ("[a](<with space.md>)", ["with space.md"]),
])
def test_link_targets(text, targets):
    prose, _, _ = split_code(text)
    assert [t for _, t in link_targets(prose)] == targets

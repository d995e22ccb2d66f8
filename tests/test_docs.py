"""The Markdown documentation: its links resolve and the README stays short.

Every relative link in README.md, docs/*.md and bench/README.md must name a
file that exists, and a ``#anchor`` into a Markdown file must name one of
its headings (as GitHub spells heading anchors). The README lists every
preset of ``configs/`` with the command its docstring documents.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, ROOT / "bench" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
README_MAX_LINES = 200

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[str]:
  """The lines outside fenced code blocks."""
  lines, fenced = [], False
  for line in text.splitlines():
    if _FENCE.match(line):
      fenced = not fenced
      continue
    if not fenced:
      lines.append(line)
  return lines


def slug(heading: str) -> str:
  """GitHub's anchor for a heading's text, before de-duplication."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # Links: text.
  text = re.sub(r"[^\w\- ]", "", text.strip().lower())
  return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
  """The anchors of a Markdown file's headings, duplicates numbered."""
  seen: dict[str, int] = {}
  result = set()
  for line in _prose_lines(path.read_text(encoding="utf-8")):
    match = _HEADING.match(line)
    if not match:
      continue
    base = slug(match.group(2))
    count = seen.get(base, 0)
    seen[base] = count + 1
    result.add(base if count == 0 else f"{base}-{count}")
  return result


def links(path: pathlib.Path) -> list[str]:
  """The link and image targets of a Markdown file, outside code."""
  targets = []
  for line in _prose_lines(path.read_text(encoding="utf-8")):
    targets.extend(_LINK.findall(_CODE_SPAN.sub("", line)))
  return targets


def broken_links(path: pathlib.Path) -> list[str]:
  """Each relative link of ``path`` that names no file or no heading."""
  problems = []
  for target in links(path):
    if _SCHEME.match(target):
      continue  # http:, https:, mailto: ...
    file_part, _, anchor = target.partition("#")
    linked = (path.parent / file_part).resolve() if file_part else path
    if not linked.exists():
      problems.append(f"{target}: no file {linked}")
    elif anchor and linked.suffix == ".md":
      if anchor not in anchors(linked):
        problems.append(f"{target}: no heading #{anchor} in {linked.name}")
  return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
  assert path.exists()
  problems = broken_links(path)
  assert not problems, "\n".join(problems)


def test_a_broken_link_is_found(tmp_path):
  (tmp_path / "there.md").write_text("# A heading\n\ntext\n")
  page = tmp_path / "page.md"
  page.write_text(
    "[ok](there.md#a-heading) [gone](missing.md) [bad](there.md#nope)\n"
    "`[in code](missing.md)` [web](https://example.com/x.md)\n"
    "```\n[fenced](missing.md)\n```\n"
  )
  assert [p.split(":")[0] for p in broken_links(page)] == [
    "missing.md",
    "there.md#nope",
  ]


def test_slug_follows_github():
  assert slug("4. SLPO forms that keep Eq. 6's target: a fair frontier") == (
    "4-slpo-forms-that-keep-eq-6s-target-a-fair-frontier"
  )
  assert slug("Checking a TPU plan from a CPU") == (
    "checking-a-tpu-plan-from-a-cpu"
  )
  assert slug("Bring your own pairs (JSONL)") == "bring-your-own-pairs-jsonl"


def test_readme_is_short():
  lines = README.read_text(encoding="utf-8").count("\n")
  assert lines <= README_MAX_LINES, f"README.md has {lines} lines"


def _normalised(text: str) -> str:
  return " ".join(text.replace("\\\n", " ").split())


def _documented_commands(preset: pathlib.Path) -> list[str]:
  """The commands a preset's docstring shows as literal blocks."""
  docstring = ast.get_docstring(ast.parse(preset.read_text())) or ""
  blocks = re.findall(
    r"^[ \t]+(python -m .*?)(?:\n[ \t]*\n|\Z)", docstring, re.M | re.S
  )
  return [_normalised(block) for block in blocks]


PRESETS = sorted(
  p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py"
)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_readme_lists_preset_with_its_command(preset):
  readme = README.read_text(encoding="utf-8")
  assert re.search(rf"^\| `{preset.stem}` \|", readme, re.M), (
    f"no row for {preset.stem} in the README's presets table"
  )
  for command in _documented_commands(preset):
    assert command in _normalised(readme), (
      f"README lacks {preset.name}'s documented command: {command}"
    )

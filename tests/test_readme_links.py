"""The README and docs/ keep their promises: the README stays short, every relative link in them points to a file
(and a heading) that exists, docs/index.md lists every page, and the commands the README runs exist."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
INDEX = DOCS / "index.md"
LINKED_FILES = [README, ROOT / "sweeps" / "README.md", *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", flags=re.M)
CODE_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)?\n(.*?)^```", flags=re.S | re.M)


def links(text: str) -> list[str]:
    """The markdown link targets of ``text`` outside fenced code blocks, web and mail addresses left out."""
    return [t for t in LINK.findall(FENCE.sub("", text)) if not re.match(r"(https?:|mailto:)", t)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base, n = slug(heading), 0
        while (name := base if n == 0 else f"{base}-{n}") in found:
            n += 1
        found.add(name)
    return found


def broken(source: Path, target: str) -> str | None:
    """Why ``target``, linked from ``source``, does not resolve, or None when it does."""
    path_part, _, anchor = target.partition("#")
    path = (source.parent / path_part).resolve() if path_part else source
    if not path.exists():
        return f"{source.relative_to(ROOT)}: {target} does not exist"
    if anchor and path.suffix == ".md" and anchor not in anchors(path):
        return f"{source.relative_to(ROOT)}: {target} names no heading of {path.name}"
    return None


def test_readme_has_at_most_150_lines():
    lines = README.read_text().count("\n")  # as `wc -l` counts them
    assert 0 < lines <= 150, f"README.md has {lines} lines; move the detail into docs/"


def test_every_relative_link_of_the_readme_and_docs_resolves():
    checked, problems = 0, []
    for source in LINKED_FILES:
        for target in links(source.read_text()):
            checked += 1
            if (why := broken(source, target)) is not None:
                problems.append(why)
    assert checked >= 50, f"only {checked} links found: has the link format changed?"
    assert not problems, "\n".join(problems)


def test_the_link_checker_catches_a_missing_file_and_a_missing_heading():
    assert links("see [a](docs/nowhere.md), [b](https://x.org) and\n```\n[c](code.md)\n```\n") == ["docs/nowhere.md"]
    assert broken(README, "docs/nowhere.md") is not None
    assert broken(README, "docs/index.md#no-such-heading") is not None
    assert broken(README, "docs/index.md") is None
    assert slug("The guard: `train.spike_guard=k`") == "the-guard-trainspike_guardk"


def test_docs_index_links_every_docs_page():
    linked = {(INDEX.parent / t.partition("#")[0]).resolve() for t in links(INDEX.read_text())}
    pages = {p.resolve() for p in DOCS.glob("*.md")} - {INDEX.resolve()}
    assert pages, "docs/ holds no pages"
    missing = sorted(p.name for p in pages - linked)
    assert not missing, f"docs/index.md does not link {missing}"


def test_sweeps_readme_points_into_docs_not_back_to_the_readme():
    targets = links((ROOT / "sweeps" / "README.md").read_text())
    assert any(t.startswith("../docs/") for t in targets), targets
    assert not any(t.partition("#")[0].endswith("../README.md") for t in targets), targets


def commands(text: str) -> list[list[str]]:
    """The simple commands of the shell code blocks of ``text`` (comments dropped, continuations joined)."""
    found = []
    for block in CODE_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line)
            for part in re.split(r"&&|\|\||;|\|", line):
                words = shlex.split(part)
                while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value before the command
                    words.pop(0)
                if words:
                    found.append(words)
    return found


def alphaflow_subcommands() -> set[str]:
    from alphaflow.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def make_targets() -> set[str]:
    targets: set[str] = set()
    for names in re.findall(r"^([A-Za-z0-9_.\-][A-Za-z0-9_.\- ]*):(?!=)", (ROOT / "Makefile").read_text(), flags=re.M):
        targets.update(names.split())
    return targets


def test_every_alphaflow_command_the_readme_runs_exists():
    used = {words[1] for words in commands(README.read_text())
            if Path(words[0]).name == "alphaflow" and len(words) > 1}
    assert {"train", "probe", "sweep", "report"} <= used, used
    unknown = used - alphaflow_subcommands()
    assert not unknown, f"the README runs alphaflow {sorted(unknown)}, which `alphaflow --help` does not list"


def test_every_make_target_the_readme_runs_exists():
    used = {w for words in commands(README.read_text()) if words[0] == "make"
            for w in words[1:] if "=" not in w and not w.startswith("-")}
    assert {"setup", "demo", "test"} <= used, used
    unknown = used - make_targets()
    assert not unknown, f"the README runs make {sorted(unknown)}, which the Makefile does not define"


def test_the_command_parser_finds_commands_and_drops_comments():
    text = "```bash\nmake demo DEMO_SHELLS=4   # the job\nX=1 alphaflow probe runs/a \\\n  --parts && make lab\n```\n"
    assert commands(text) == [["make", "demo", "DEMO_SHELLS=4"], ["alphaflow", "probe", "runs/a", "--parts"],
                              ["make", "lab"]]
    assert "train" in alphaflow_subcommands() and "nosuchcommand" not in alphaflow_subcommands()
    assert "test-fast" in make_targets() and "nosuchtarget" not in make_targets()

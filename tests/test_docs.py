"""The README and the guides in docs/ say what works: every shell, console and Python block runs as written, in
page order, in a fresh folder whose home holds the tiny data set as `~/Datasets` (the default `data.root`), and the
output a page shows after a block is found in what the block printed; a block that cannot run here says why in a
`<!-- not run: REASON -->` line above it, an output that cannot match the tiny data in `<!-- not checked: REASON
-->`. Runs are shortened, never changed otherwise: a run or sweep trains 1 epoch on the whole tiny data set (its
`data.subset` dropped), a benchmark 1 timed epoch of 1 batch. Every link inside the repository resolves, headings
included, and every guide is linked from the README."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, make_fashion_root

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_LINES = 200
MARK = re.compile(r"<!-- (not run|not checked): (.+?) -->")
FENCE = re.compile(r"^( *)```(\S*)\s*$")
RUNNABLE = {"bash": "shell", "console": "console", "python": "python"}
OUTPUT = {"", "text"}
BLOCK_TIMEOUT_S = 900  # a guard against a hang: the longest block (six CNNs, their ensemble) takes about a minute


@dataclass
class Block:
    """A fenced block of a page: its first line's number, language, text and the mark above it."""

    page: Path
    line: int
    lang: str
    text: str
    mark: tuple[str, str] | None

    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page.name
        return f"{page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of `page`, their indentation (a block inside a list item) removed."""
    lines, found, i = page.read_text().splitlines(), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, lang, start = len(fence.group(1)), fence.group(2), i
        i += 1
        body = []
        while not lines[i].strip().startswith("```"):
            body.append(lines[i][indent:])
            i += 1
        above = MARK.search(lines[start - 1]) if start else None
        mark = (above.group(1), above.group(2)) if above else None
        found.append(Block(page, start + 1, lang, "\n".join(body) + "\n", mark))
        i += 1
    return found


# What makes a documented command short here: (its start, the options or overrides it gets, what they replace, whether
# they go right after the start or at the end of the command, where Hydra wants its overrides).
SHORTER = [
    (
        re.compile(r"\bpython -m fmsweep\.bench\b(?!\.)"),
        " --epochs 1 --warmup 0 --cpu-cnn-batches 1 --job-epochs 1",
        re.compile(r" --(epochs|warmup|cpu-cnn-batches|job-epochs) \d+"),
        False,
    ),
    (re.compile(r"\bpython -m fmsweep\.bench\.startup\b"), " --repeat 1", re.compile(r" --repeat \d+"), False),
    (
        re.compile(
            r"(^|&& |; |\w+=\S* )(python -m fmsweep|fmsweep)(?! (status|resume|cancel|report|ensemble|-sc|--))"
            r"(?=\s|$)"
        ),
        " epochs=1",
        re.compile(r" (epochs|data\.subset)=\d+"),
        True,
    ),
]


def shorter(command: str) -> str:
    """`command` with its training shortened: its own options or overrides of SHORTER's kind replaced by SHORTER's,
    which go right after the command's start or at the end of the command (before a `&&`, `;` or `|`)."""
    for start, options, replaces, at_end in SHORTER:
        found = start.search(command)
        if found:
            rest = command[found.end() :]
            end = next(re.finditer(r" (&&|;|\|) |$", rest)).start()
            head, tail = replaces.sub("", rest[:end]), rest[end:]
            if at_end:
                return command[: found.end()] + head + options + tail
            return command[: found.end()] + options + head + tail
    return command


def commands(shell: str) -> list[str]:
    """The commands of a shell block, one per logical line (continuations joined), comments dropped."""
    joined = re.sub(r"\\\n\s*", "", shell)
    lines = (re.sub(r"(^|\s)#(\s.*)?$", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


NUMBER = r"[-+]?(?:\d[\d,]*)?\.?\d+(?:e[-+]?\d+)?"
TOKEN = re.compile(r"(<[a-z][^<>]*>|…|[-+]?(?:\d[\d,]*)?\.?\d+(?:e[-+]?\d+)?|\s+)")


def line_pattern(shown: str) -> re.Pattern[str]:
    """What a shown output line stands for: its words as written, any number in place of each number, anything
    in place of a `<placeholder>` or `…`, any run of spaces for a run of spaces."""
    parts = []
    for part in TOKEN.split(shown.strip()):
        if not part:
            continue
        if part.isspace():
            parts.append(r"\s+")
        elif part == "…" or (part.startswith("<") and part.endswith(">")):
            parts.append(".*?")
        elif re.fullmatch(NUMBER, part):
            parts.append(NUMBER)
        else:
            parts.append(re.escape(part))
    return re.compile("".join(parts))


def missing(shown: str, printed: str) -> list[str]:
    """The lines of `shown` that no line of `printed` matches."""
    got = [line.strip() for line in printed.splitlines()]
    return [
        line for line in shown.splitlines() if line.strip() and not any(line_pattern(line).fullmatch(g) for g in got)
    ]


def sandbox(tmp_path: Path, test_images: int) -> tuple[Path, dict[str, str]]:
    """A folder to run a page in and its environment: a home holding the tiny data set (with `test_images` test
    images) as ~/Datasets, the venv's commands first on the PATH."""
    home = tmp_path / "home"
    make_fashion_root(home / "Datasets", n_test=test_images)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", MPLBACKEND="Agg")
    return work, env


def run(block: Block, work: Path, env: dict[str, str]) -> str:
    """Run a runnable block in `work`; its output (stdout and stderr). A shell or Python block must exit 0; a
    console block's commands may fail (it shows their errors), each its own shell."""
    if block.lang == "python":
        scripts = [[sys.executable, "-c", block.text]]
    elif block.lang == "bash":
        scripts = [["bash", "-euo", "pipefail", "-c", "\n".join(shorter(c) for c in commands(block.text))]]
    else:
        scripts = [["bash", "-c", shorter(line[2:])] for line in block.text.splitlines() if line.startswith("$ ")]
    printed = []
    for script in scripts:
        proc = subprocess.run(script, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        printed.append(proc.stdout + proc.stderr)
        if block.lang != "console" and proc.returncode != 0:
            pytest.fail(f"{block.where()}: exit code {proc.returncode}:\n{script[-1]}\n{printed[-1][-3000:]}", False)
    return "".join(printed)


def shown_by_console(block: Block) -> str:
    return "\n".join(line for line in block.text.splitlines() if not line.startswith("$ "))


def check_page(page: Path, tmp_path: Path) -> int:
    """Run `page`'s blocks in order, each shown output checked against the block before it; the blocks run."""
    # an ensemble needs 1,000 test images (fmsweep.results.ensemble.MIN_IMAGES); every run evaluates them all
    work, env = sandbox(tmp_path, 1000 if any("ensemble" in block.text for block in blocks(page)) else 200)
    printed, ran = None, 0
    for block in blocks(page):
        if block.mark and block.mark[0] == "not run":
            printed = None
            continue
        if block.lang in RUNNABLE:
            printed = run(block, work, env)
            ran += 1
            shown = shown_by_console(block) if block.lang == "console" else ""
        elif block.lang in OUTPUT and not block.mark:
            assert printed is not None, f"{block.where()}: an output block with no block run before it"
            shown = block.text
        else:
            continue
        lost = missing(shown, printed or "")
        if lost:
            lines, tail = "\n".join(lost), (printed or "")[-3000:]
            pytest.fail(f"{block.where()}: shown but not printed:\n{lines}\n--- printed:\n{tail}", False)
    return ran


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_of_the_page_runs_as_written_and_prints_what_it_shows(page: Path, tmp_path: Path) -> None:
    check_page(page, tmp_path)


def test_every_block_runs_or_says_why_not() -> None:
    """A shell, console or Python block is run unless marked; a mark names its reason; no other language hides a
    command from the test."""
    unmarked = [
        b.where()
        for p in PAGES
        for b in blocks(p)
        if b.lang not in RUNNABLE and b.lang not in OUTPUT and b.lang not in ("yaml", "markdown")
    ]
    assert not unmarked, f"blocks in a language the docs test does not know: {unmarked}"
    empty = [b.where() for p in PAGES for b in blocks(p) if b.mark and not b.mark[1].strip()]
    assert not empty, f"marks without a reason: {empty}"


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """The anchors the forge gives `page`'s headings: lower case, punctuation dropped, spaces as hyphens, a
    repeated one numbered."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#+ (.+)$", page.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    """Each link of `page` into the repository whose file or heading does not exist."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in (a or b for a, b in LINK.findall(text)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no such heading in {file.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_inside_the_repository_resolves(page: Path) -> None:
    assert not broken_links(page)


def test_the_readme_is_short_and_links_every_guide() -> None:
    assert len(README.read_text().splitlines()) <= README_LINES
    linked = {(README.parent / a).resolve() for a, _ in LINK.findall(README.read_text()) if a.startswith("docs/")}
    assert set(PAGES[1:]) <= {p.with_suffix(".md") for p in linked}


def test_a_number_matches_any_number_and_a_word_only_itself() -> None:
    shown = "lr=0.1  completed: valid loss 0.3312, valid acc 88.02 % (best epoch 3 of 3) in <sweep dir>/report.md"
    assert not missing(shown, "lr=0.1  completed: valid loss 1.5, valid acc 9.1 % (best epoch 1 of 1) in x/y/report.md")
    assert missing(shown, "lr=0.1  completed: valid loss 0.3312, valid acc 88.02 % (best epoch 3 of 3) in x/report.csv")
    assert missing(shown, "lr=0.1  failed: valid loss 0.3312, valid acc 88.02 % (best epoch 3 of 3) in x/report.md")


def test_a_broken_command_fails_its_page_and_says_where(tmp_path: Path) -> None:
    page = tmp_path / "guide.md"
    page.write_text(
        "```bash\nfmsweep --help > /dev/null\n```\n\n"
        "```console\n$ fmsweep model=fcc\nfmsweep: error: model=fcc: no such option of model (its options: fancy_cnn, "
        "fc, linear, vanilla_cnn); did you mean fc?\n```\n\n"
        "<!-- not run: a negative control -->\n```bash\nexit 3\n```\n"
    )
    assert check_page(page, tmp_path / "ok") == 2
    page.write_text(page.read_text().replace("model=fcc\nfmsweep: error: model=fcc", "model=fcc\nfmsweep: error: x"))
    with pytest.raises(pytest.fail.Exception, match=r"guide\.md:5: shown but not printed"):
        check_page(page, tmp_path / "wrong output")
    page.write_text("```bash\nfmsweep modle=fc\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"guide\.md:1: exit code 2"):
        check_page(page, tmp_path / "failing")


def test_a_run_is_shortened_and_otherwise_as_written() -> None:
    assert shorter("fmsweep -m model=fc epochs=5 seed=0,1") == "fmsweep -m model=fc seed=0,1 epochs=1"
    assert (
        shorter("python -m fmsweep experiment=fancy_cnn_aug && ls")
        == "python -m fmsweep experiment=fancy_cnn_aug epochs=1 && ls"
    )
    assert shorter("fmsweep status multirun/lab --watch") == "fmsweep status multirun/lab --watch"
    assert shorter("python -m fmsweep.bench --pack 6 --epochs 3 x=1") == (
        "python -m fmsweep.bench --epochs 1 --warmup 0 --cpu-cnn-batches 1 --job-epochs 1 --pack 6 x=1"
    )
    assert shorter("python -m fmsweep.bench.status --jobs 10") == "python -m fmsweep.bench.status --jobs 10"


def test_a_link_to_a_missing_file_or_heading_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "# Top\n## A `b=c` d\n[x](#a-bc-d) [y](#top) [z](b.md) [w](#nope) [v](https://example.org/x)\n"
    )
    assert broken_links(tmp_path / "a.md") == ["b.md: no such file", "#nope: no such heading in a.md"]

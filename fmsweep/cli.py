"""`fmsweep`, the console script: `fmsweep status|resume|cancel|report|ensemble DIR ...` run the sweep tools,
anything else is Hydra's command line (`fmsweep model=fc`, `fmsweep -m ...`, `fmsweep --help`, `fmsweep -sc ...`).

Only the standard library is imported up front: a tool, or Hydra, loads when the command line asks for it, so
that `--help` and shell completion answer at once. Hydra's shell completion calls back `fmsweep -sc query=bash`
with the line typed so far in COMP_LINE; that query is answered here for the tools (their names, then
directories) and left to Hydra for the overrides."""

from __future__ import annotations

import importlib
import os
import sys

# the sweep tools by subcommand: each module has main(argv)
TOOLS = {
    "status": "fmsweep.sweep.status",
    "resume": "fmsweep.sweep.resume",
    "cancel": "fmsweep.sweep.cancel",
    "report": "fmsweep.results.report",
    "ensemble": "fmsweep.results.ensemble",
}


def main() -> None:
    """Run the tool that argv[1] names, answer a completion query about the tools, or else run Hydra's app."""
    args = sys.argv[1:]
    if args and args[0] in TOOLS:
        importlib.import_module(TOOLS[args[0]]).main(args[1:])
        return
    shell = completion_shell(args)
    if shell is not None and complete(os.environ["COMP_LINE"], shell):
        return
    import fmsweep.__main__

    fmsweep.__main__.main()


def completion_shell(args: list[str]) -> str | None:
    """The shell of a completion query (`-sc query=bash`, as Hydra's installed shell function makes it, with
    COMP_LINE set); None for any other command line."""
    if "COMP_LINE" not in os.environ or not {"-sc", "--shell-completion"} & set(args):
        return None
    return next((arg.partition("=")[2] for arg in args if arg.startswith("query=")), None)


def complete(line: str, shell: str) -> bool:
    """Answer a completion query about the line typed so far; whether it is fully answered.

    After a tool's name: the directories that complete the word (answered). While the first word is typed: the
    tools it begins (printed, then Hydra adds its overrides: not fully answered). Otherwise Hydra's alone."""
    point = os.environ.get("COMP_POINT", "")
    if point.isdigit():
        line = line[: int(point)]
    words = line.split()[1:]  # after the program
    new_word = not line or line[-1].isspace()
    word = "" if new_word or not words else words[-1]
    separator = "\n" if shell == "fish" else " "
    if words and words[0] in TOOLS and (new_word or len(words) > 1):
        print(separator.join(directories(word)))
        return True
    if len(words) == (0 if new_word else 1):
        tools = [tool for tool in TOOLS if tool.startswith(word)]
        if tools:
            print(separator.join(tools), flush=True)
    return False


def directories(word: str) -> list[str]:
    """The directories whose path begins with `word` (as typed: relative, absolute or from ~), each ending in /
    so that the next completion goes down into it; hidden ones only when `word`'s last part begins with a dot."""
    head = word[: word.rfind("/") + 1]
    prefix = word[len(head) :]
    try:
        with os.scandir(os.path.expanduser(head) if head else ".") as entries:
            names = [
                entry.name
                for entry in entries
                if entry.name.startswith(prefix)
                and entry.is_dir()
                and (prefix.startswith(".") or not entry.name.startswith("."))
            ]
    except OSError:
        return []
    return [f"{head}{name}/" for name in sorted(names)]


if __name__ == "__main__":
    main()

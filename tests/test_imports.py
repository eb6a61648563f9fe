"""fmsweep's imports form no cycle and keep its layers, read from the source (module- and function-level imports,
absolute and relative): the run side (the top-level modules) imports of fmsweep/sweep/ and fmsweep/results/ only
the few modules that are part of a run; the results import of the sweep side only where a search's study lives and
how its values read; the sweep side imports of the results only the reading of runs and what a sweep writes at its
end. The benchmarks (fmsweep/bench/) sit above all three and may import any of them."""

import ast
from pathlib import Path

import fmsweep

# what the run side may import of sweep/ and results/; these import, of those two, only each other
RUN_SIDE_MAY = {"sweep.lock", "sweep.storage", "sweep.trial", "sweep.packing", "results.runs", "results.figures"}
RESULTS_MAY = {"sweep.storage", "sweep.space"}
SWEEP_MAY = {"results.runs", "results.finish"}
TOOLS = {"status"}  # the top-level entry point of a sweep tool: `python -m fmsweep.status`
API = {("fmsweep", "fmsweep.results.api")}  # the package's public API: fmsweep.load_sweep, imported on first use


def graph(root: Path) -> dict[str, set[str]]:
    """Each module of the package in `root` -> the package's modules it imports anywhere in its source."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                head = package.rsplit(".", node.level - 1)[0] if node.level else ""
                base = ".".join(filter(None, [head, node.module]))
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names}
        edges[name] = {m for m in found if m in names and m != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[str]:
    """Each cycle a depth-first walk closes, as `a -> b -> a`."""
    found, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for dep in sorted(edges[module]):
            if state.get(dep) == "open":
                found.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return found


def breaches(edges: dict[str, set[str]]) -> list[str]:
    """Each import across the layers that the module docstring does not allow, as `a -> b`."""

    def short(module: str) -> str:
        return module.partition(".")[2]

    def home(module: str) -> str:
        top = short(module).partition(".")[0]
        return top if top in ("sweep", "results", "bench") else "run"

    found = []
    for module, deps in sorted(edges.items()):
        if short(module) in TOOLS or home(module) == "bench":
            continue
        layer = "run" if short(module) in RUN_SIDE_MAY else home(module)
        may = {"run": RUN_SIDE_MAY, "results": {"results", *RESULTS_MAY}, "sweep": {"sweep", *SWEEP_MAY}}[layer]
        found += [
            f"{module} -> {dep}"
            for dep in sorted(deps)
            if home(dep) != "run" and short(dep) not in may and home(dep) not in may and (module, dep) not in API
        ]
    return found


PACKAGE = graph(Path(fmsweep.__file__).parent)


def test_the_package_has_no_import_cycle() -> None:
    assert "fmsweep.sweep.worker" in PACKAGE["fmsweep.sweep.search"]  # imported in run_search: counted too
    found = cycles(PACKAGE)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_package_keeps_its_layers() -> None:
    found = breaches(PACKAGE)
    assert not found, "imports across the layers (tests/test_imports.py says which are allowed):\n" + "\n".join(found)


def test_the_checker_finds_a_cycle_and_a_breach(tmp_path: Path) -> None:
    files = {
        "__init__.py": "",
        "train.py": "from fmsweep.sweep import search\nfrom fmsweep.sweep.lock import hold\n",
        "sweep/__init__.py": "",
        "sweep/lock.py": "",
        "sweep/grid.py": "import fmsweep.sweep.search\n",
        "sweep/search.py": "def later():\n    from . import grid\n",
        "results/__init__.py": "",
        "results/report.py": "from ..sweep.search import later\n",
    }
    for name, text in files.items():
        (tmp_path / "fmsweep" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "fmsweep" / name).write_text(text)
    edges = graph(tmp_path / "fmsweep")
    assert cycles(edges) == ["fmsweep.sweep.search -> fmsweep.sweep.grid -> fmsweep.sweep.search"]
    assert breaches(edges) == [
        "fmsweep.results.report -> fmsweep.sweep.search",
        "fmsweep.train -> fmsweep.sweep.search",
    ]

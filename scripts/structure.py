"""The shape of ``src/explorl``, measured: import circles, imports that go up a floor, the
plain-data modules' imports, the longest functions and the trainer's length.

Every ``import explorl...`` counts, at module level or inside a function (a lazy import is still
a dependency). A module's floor is the first entry of ``FLOORS`` that names it or a package
above it; an import may go to the same floor or below. Exit code 1 when a rule is broken.

    python scripts/structure.py            # the report
    python scripts/structure.py --json     # the same as one JSON object
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

PLAIN_DATA = ("explorl.errors", "explorl.batch")
"""The ground floor: dataclasses of tensors and lists, importing nothing of explorl but each
other."""

FLOORS: list[tuple[str, ...]] = [
    PLAIN_DATA,
    # pure functions and small utilities over plain data
    ("explorl.algorithms.losses", "explorl.algorithms.advantages", "explorl.config_files",
     "explorl.devices", "explorl.output_lock", "explorl.interrupts", "explorl.failures",
     "explorl.metrics", "explorl.tracking", "explorl.optim"),
    # what a run is made of: models, data, rewards, rollouts, processes, checkpoints
    ("explorl.models", "explorl.data", "explorl.rewards", "explorl.rollout",
     "explorl.distributed", "explorl.evaluation", "explorl.checkpoint"),
    # methods: algorithms, exploration, multi-turn agents, test-time improvement, sampling,
    # the warm start
    ("explorl.algorithms", "explorl.exploration", "explorl.agents", "explorl.improve",
     "explorl.sample", "explorl.sft"),
    # the configuration, which names the methods and checks their settings
    ("explorl.config",),
    # runs
    ("explorl.run", "explorl.trainer", "explorl.offline", "explorl.rm", "explorl.report",
     "explorl.compare"),
    ("explorl.cli", "explorl.__main__"),
    ("explorl",),  # the package: its public names
]
MAX_FUNCTION_LINES = 80
MAX_TRAINER_LINES = 300


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "explorl").rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The explorl modules ``path`` imports (a ``from a import b`` where ``a.b`` is a module
    imports ``a.b``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("explorl")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("explorl"):
                continue
            subs = {f"{base}.{a.name}" for a in node.names} & known
            out |= subs or {base}
    return {m for m in out if m in known and m != name}


def floor_of(name: str) -> int:
    best = None
    for i, names in enumerate(FLOORS):
        for prefix in names:
            inside = name == prefix or name.startswith(prefix + ".")
            if inside and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    if best is None:
        raise SystemExit(f"{name}: on no floor; add it to FLOORS")
    return best[0]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def long_functions(files: dict[str, Path]) -> list[tuple[str, int]]:
    out = []
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    out.append((f"{name}.{node.name}", lines))
    return sorted(out, key=lambda x: -x[1])


def trainer_lines(path: Path) -> int:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            return node.end_lineno - node.lineno + 1
    return 0


def report() -> dict:
    files = modules()
    known = set(files)
    graph = {name: imports_of(path, name, known) for name, path in files.items()}
    upward = sorted((a, b) for a, deps in graph.items() for b in deps
                    if floor_of(b) > floor_of(a))
    plain = sorted((a, b) for a in PLAIN_DATA for b in graph.get(a, ()) if b not in PLAIN_DATA)
    functions = long_functions(files)
    return {"modules": len(files), "circles": circles(graph),
            "upward_imports": [f"{a} -> {b}" for a, b in upward],
            "plain_data_imports": [f"{a} -> {b}" for a, b in plain],
            "functions_over_limit": [f"{n} ({k} lines)" for n, k in functions],
            "trainer_lines": trainer_lines(files["explorl.trainer"])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    ns = p.parse_args()
    r = report()
    ok = not (r["circles"] or r["upward_imports"] or r["plain_data_imports"]
              or r["functions_over_limit"]) and r["trainer_lines"] <= MAX_TRAINER_LINES
    if ns.json:
        print(json.dumps({**r, "ok": ok}, indent=1))
        return 0 if ok else 1
    print(f"{r['modules']} modules")
    print(f"import circles: {len(r['circles'])}")
    for c in r["circles"]:
        print("  " + " <-> ".join(c))
    print(f"imports from a lower floor to a higher one: {len(r['upward_imports'])}")
    for line in r["upward_imports"]:
        print("  " + line)
    print(f"plain-data modules importing more than each other: {len(r['plain_data_imports'])}")
    for line in r["plain_data_imports"]:
        print("  " + line)
    print(f"functions over {MAX_FUNCTION_LINES} lines: {len(r['functions_over_limit'])}")
    for line in r["functions_over_limit"]:
        print("  " + line)
    print(f"Trainer: {r['trainer_lines']} lines (at most {MAX_TRAINER_LINES})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

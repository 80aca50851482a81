"""The package's import graph: every module imports on its own, and no soulcli import cycles,
module-level or hidden in a function body (a function-level import that hides a cycle only
delays it to run time)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import soulcli

SRC = Path(soulcli.__file__).resolve().parent


def module_names() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the soulcli modules it imports anywhere in its body (``from a import b`` counts
    as importing ``a.b`` when ``b`` is a module, else ``a``)."""
    known = set(module_names())
    graph: dict[str, set[str]] = {}
    for name in known:
        path = SRC.parent / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                           for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in known and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_on_hand_built_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_in_soulcli():
    graph = import_graph()
    assert "soulcli.workflows.artifacts" in graph["soulcli.workflows.evaluate"]
    assert "soulcli.workflows.finetune" in graph["soulcli.workflows.artifacts"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_workflows_layering():
    """common < finetune < artifacts < provenance < evaluate < tracking < unlearn < attack < compare:
    never the reverse."""
    graph = import_graph()
    order = ["common", "finetune", "artifacts", "provenance", "evaluate", "tracking", "unlearn", "attack", "compare"]
    for i, low in enumerate(order):
        for high in order[i + 1:]:
            assert f"soulcli.workflows.{high}" not in graph[f"soulcli.workflows.{low}"], (low, high)
    assert not any(m.startswith("soulcli.workflows") for m in graph["soulcli.workflows.common"])


# the recipe sits above the components whose declared arguments it checks (eval's EvalConfig
# is its `eval` section)
LAYERS = {"errors": 0, "schema": 1, "data": 2, "models": 3, "objectives": 3, "optim": 3,
          "engine": 4, "eval": 4, "attacks": 4, "tasks": 5, "recipe": 6, "workflows": 7, "cli": 8}


def test_packages_depend_one_way():
    """cli -> workflows -> recipe -> tasks -> engine / eval / attacks -> objectives, optim, models -> data -> schema
    -> errors; a module imports only lower layers (or its own package)."""
    def layer(module: str) -> int:
        return LAYERS[module.split(".")[1]]

    wrong = sorted((a, b) for a, targets in import_graph().items() if a != "soulcli"
                   for b in targets if layer(b) >= layer(a) and a.split(".")[1] != b.split(".")[1])
    assert wrong == []


def test_every_module_imports_in_a_fresh_interpreter():
    """Each module on its own, in an interpreter where nothing was imported before it (the
    ones that import heavy libraries share one, which costs a second rather than a minute)."""
    names = [n for n in module_names() if not n.endswith("__main__")]
    code = ("import importlib, sys\n"
            "for m in sys.argv[1:]:\n"
            "    importlib.import_module(m)\n")
    res = subprocess.run([sys.executable, "-c", code, *reversed(names)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-1500:]
    for name in ("soulcli.workflows.artifacts", "soulcli.workflows.evaluate", "soulcli.workflows.compare"):
        res = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True)
        assert res.returncode == 0, f"{name}: {res.stderr[-800:]}"


def test_the_engine_knows_no_objective():
    """The step gets a forward that returns (loss, terms, logits): engine never imports objectives."""
    graph = import_graph()
    engine = {m: t for m, t in graph.items() if m.startswith("soulcli.engine")}
    assert engine and not any(t.startswith("soulcli.objectives") for ts in engine.values() for t in ts)

"""The architecture's import rules, read from the source (imports inside functions included):
the method packages never import each other, no stage imports another stage, shared building
blocks and artifacts belong to no method, and only ddjax/checkpoint.py imports Orbax."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ddjax"
SHARED = ("ddjax.data", "ddjax.models", "ddjax.backbones", "ddjax.ssl", "ddjax.artifacts",
          "ddjax.checkpoint", "ddjax.config", "ddjax.runlog", "ddjax.workdir", "ddjax.defaults",
          "ddjax.viz", "ddjax.errors", "ddjax.smoke", "ddjax.mesh")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports; ``from pkg import name`` counts as ``pkg.name`` too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_was_read():
    assert "ddjax.mkdt.distill_stage" in GRAPH and "ddjax.lgm.eval_stage" in GRAPH
    assert "ddjax.checkpoint" in GRAPH["ddjax.artifacts.base"]


def test_method_packages_do_not_import_each_other():
    for module, imports in GRAPH.items():
        for a, b in (("ddjax.mkdt", "ddjax.lgm"), ("ddjax.lgm", "ddjax.mkdt")):
            bad = [i for i in imports if _within(i, b)] if _within(module, a) else []
            assert not bad, f"{module} imports {bad}"


def test_no_stage_imports_another_stage():
    stages = {m for m in GRAPH if m.endswith("_stage")}
    assert len(stages) == 8
    for module in stages:
        bad = sorted((GRAPH[module] & stages) - {module})
        assert not bad, f"{module} imports {bad}"


def test_shared_blocks_belong_to_no_method():
    for module, imports in GRAPH.items():
        if any(_within(module, shared) for shared in SHARED):
            bad = [i for i in imports if _within(i, "ddjax.mkdt") or _within(i, "ddjax.lgm")]
            assert not bad, f"{module} imports {bad}"


def test_nothing_but_the_cli_imports_the_orchestrators():
    """``ddjax run`` (ddjax.pipeline) and the CLI drive the stages; no stage, method module or
    building block reaches back into them."""
    for module, imports in GRAPH.items():
        if module in ("ddjax.cli", "ddjax.pipeline"):
            continue
        bad = [i for i in imports if _within(i, "ddjax.cli") or _within(i, "ddjax.pipeline")]
        assert not bad, f"{module} imports {bad}"


def test_only_the_checkpoint_module_imports_orbax():
    users = sorted(m for m, imports in GRAPH.items() if any(_within(i, "orbax") for i in imports))
    assert users == ["ddjax.checkpoint"]

"""The package's dependency order: core <- backbones <- editors <- harness <- tools, with no cycles.

Walks every import statement (module level, inside functions and under ``if TYPE_CHECKING:``) of
``bench`` and ``editors`` and fails on an import of a higher layer, type-only ones included (the core
types a backbone as :class:`bench.core.backbone.EditableBackbone`, not as ``bench.backbones``' class),
or on a cycle between modules at run time (a type-only import of a module that imports this one is
no cycle). It also fails when an editor or the core reads a backbone attribute that
:class:`~bench.core.backbone.EditableBackbone` does not list.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: layer of a module by prefix (longest prefix wins); anything else in ``bench`` is the harness
LAYERS = {"bench.core": 0, "bench.backbones": 1, "editors": 2, "bench": 3, "bench.speed": 4, "bench.plot": 4}
LAYER_NAMES = ("core", "backbones", "editors", "harness", "tools")


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for top in ("bench", "editors"):
        for p in (root / top).rglob("*.py"):
            parts = p.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _nodes(tree: ast.AST, type_only: bool):
    """Every node; without ``type_only``, not those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if not type_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_edges(mods: dict[str, Path], type_only: bool = True) -> set[tuple[str, str]]:
    """``(importer, imported)`` module pairs; ``type_only``: with the imports under ``if TYPE_CHECKING:``."""
    edges = set()
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _nodes(ast.parse(path.read_text(encoding="utf-8")), type_only):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = package.split(".")
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add((name, t))
    return edges


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
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
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_goes_up_a_layer():
    edges = import_edges(modules())
    up = sorted(
        f"{a} ({LAYER_NAMES[layer(a)]}) imports {b} ({LAYER_NAMES[layer(b)]})" for a, b in edges if layer(b) > layer(a)
    )
    assert not up, "back edges:\n" + "\n".join(up)


def test_no_import_cycles():
    found = cycles(import_edges(modules(), type_only=False))
    assert not found, found


def write_tree(root, files: dict[str, str]) -> None:
    """A package tree for the walker: ``{relative path: source}``."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_the_walker_sees_a_back_edge(tmp_path):
    """The check can fail: a core module importing an editor is reported."""
    write_tree(
        tmp_path,
        {
            "bench/__init__.py": "",
            "bench/core/__init__.py": "",
            "editors/__init__.py": "",
            "bench/core/types.py": "def f():\n    from editors import x\n",
            "editors/x.py": "from bench.core import types\n",
        },
    )
    edges = import_edges(modules(tmp_path))
    assert ("bench.core.types", "editors.x") in edges and layer("bench.core.types") < layer("editors.x")
    assert cycles(edges) == [["bench.core.types", "editors.x"]]


def test_the_walker_sees_a_type_only_back_edge(tmp_path):
    """An import of a higher layer under ``if TYPE_CHECKING:`` is a back edge too; a type-only import of a
    module that imports this one at run time is no cycle."""
    write_tree(
        tmp_path,
        {
            "bench/__init__.py": "",
            "bench/core/__init__.py": "",
            "bench/backbones/__init__.py": "",
            "bench/core/editor.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bench.backbones.base import B\n",
            "bench/backbones/base.py": "from bench.core import editor\n",
        },
    )
    mods = modules(tmp_path)
    edges = import_edges(mods)
    assert ("bench.core.editor", "bench.backbones.base") in edges
    assert layer("bench.core.editor") < layer("bench.backbones.base")
    assert ("bench.core.editor", "bench.backbones.base") not in import_edges(mods, type_only=False)
    assert cycles(import_edges(mods, type_only=False)) == []


#: names a backbone goes by in editors and the core (``self.backbone``, ``ed.backbone``, ``backbone``, ``bb``)
BACKBONE_NAMES = {"backbone", "bb"}


def backbone_reads(path: Path) -> set[tuple[str, int]]:
    """``(attribute, line)`` of every ``<backbone>.attribute`` read in a module."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute):
            continue
        v = node.value
        name = v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else None
        if name in BACKBONE_NAMES:
            out.add((node.attr, node.lineno))
    return out


def test_editors_use_only_what_the_backbone_protocol_lists():
    """What an editor (or the core) reads of a backbone is a member of ``EditableBackbone``, so every
    backbone that satisfies the protocol runs every editor."""
    from bench.core.backbone import protocol_members

    allowed = set(protocol_members())
    paths = sorted((ROOT / "editors").glob("*.py")) + sorted((ROOT / "bench" / "core").glob("*.py"))
    used, other = set(), []
    for p in paths:
        for attr, line in backbone_reads(p):
            used.add(attr)
            if attr not in allowed:
                other.append(f"{p.relative_to(ROOT)}:{line}: backbone.{attr}")
    assert not other, "not in bench.core.backbone.EditableBackbone:\n" + "\n".join(sorted(other))
    assert {"prepare", "ffn", "swap_ffn", "context"} <= used  # the walk does see the editors' reads

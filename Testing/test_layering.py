"""The engine's layering: wings by role, imports only downwards, no circles, Slicer in one wing.

Every engine file is parsed with `ast` (imports inside functions included: a lazy import is an
import all the same), the import graph is built from it, and three rules are held:

- no import circles between modules;
- a wing imports only itself and the wings its ``__init__`` docstring names on its
  ``May import:`` line, and those lie below it in the order the package docstring gives
  (``Wings, bottom to top: ...``); no wing imports the package top (``cli``, ``__main__``, the
  package ``__init__``);
- nothing outside the Slicer bridge imports ``slicer``, ``qt``, ``ctk`` or ``vtk``.

Also: every engine file lies in a wing or is one of the package top's files, and no engine
file is longer than MAX_LINES unless its docstring says why it is one cohesive thing. The rules
are plain functions, checked on synthetic graphs below so that each can be seen to fail.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "MotionSSIM" / "MotionSSIMLib"
PACKAGE = "MotionSSIMLib"
TOP_FILES = {"__init__.py", "__main__.py", "cli.py"}  # the package top, above every wing
SLICER_ONLY = {"slicer", "qt", "ctk", "vtk"}
SLICER_WING = "bridge"
MAX_LINES = 600
COHESIVE = "One cohesive module:"  # a longer file's docstring says why it is not split


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted (MotionSSIMLib.imaging.io)
    file: str  # its path under the repository
    line: int
    text: str  # the import statement as written
    target: str  # imported module, dotted (MotionSSIMLib.base.errors, or numpy)


# --------------------------------------------------------------------------------------------
# The graph


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split("."))
    return (ENGINE.parent / rel.with_suffix(".py")).is_file() or \
        (ENGINE.parent / rel / "__init__.py").is_file()


def imports_of(path: Path) -> list[Import]:
    """Every import in `path`, relative ones resolved to absolute module names; `from P import
    n` targets P.n when that is a module, else P."""
    source = module_name(path)
    package = source if path.name == "__init__.py" else source.rsplit(".", 1)[0]
    text = path.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                if node.module:
                    base += node.module.split(".")
                base_name = ".".join(base)
            else:
                base_name = node.module or ""
            targets = []
            for a in node.names:
                sub = f"{base_name}.{a.name}"
                targets.append(sub if base_name.startswith(PACKAGE) and _is_module(sub)
                               else base_name)
        else:
            continue
        statement = ast.get_source_segment(text, node) or ""
        rel = path.relative_to(ROOT).as_posix()
        for target in dict.fromkeys(targets):
            found.append(Import(source, rel, node.lineno, " ".join(statement.split()), target))
    return found


def engine_files() -> list[Path]:
    return sorted(p for p in ENGINE.rglob("*.py") if "__pycache__" not in p.parts)


def engine_imports() -> list[Import]:
    return [imp for path in engine_files() for imp in imports_of(path)]


def wing_of(module: str) -> str | None:
    """The wing a module belongs to ("base", "imaging", ...), None for the package top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and _is_wing(parts[1])) else None


def _is_wing(name: str) -> bool:
    return (ENGINE / name / "__init__.py").is_file()


# --------------------------------------------------------------------------------------------
# What the docstrings declare


def declared_order() -> list[str]:
    doc = ast.get_docstring(ast.parse((ENGINE / "__init__.py").read_text(encoding="utf-8")))
    m = re.search(r"Wings, bottom to top:\s*([\w,\s]+?)\.", doc or "")
    assert m, "MotionSSIMLib/__init__.py: no 'Wings, bottom to top: a, b, ....' line"
    return [w.strip() for w in m.group(1).split(",") if w.strip()]


def declared_imports(wing: str) -> set[str]:
    doc = ast.get_docstring(ast.parse((ENGINE / wing / "__init__.py").read_text(
        encoding="utf-8"))) or ""
    m = re.search(r"May import:\s*([^.]*)\.", doc)
    assert m, f"MotionSSIMLib/{wing}/__init__.py: no 'May import: ...' line in its docstring"
    text = m.group(1)
    return set() if text.strip().startswith("nothing") else \
        {w.strip() for w in text.split(",") if w.strip()}


# --------------------------------------------------------------------------------------------
# The rules, as functions of a graph (so that they can be tested on made-up ones)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components with more than one module, or a
    module importing itself (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles = []
    counter = 0
    nodes = sorted(set(edges) | {t for ts in edges.values() for t in ts})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    cycles.append(sorted(component))
    return cycles


def layering_violations(imports: list[Import], order: list[str],
                        allowed: dict[str, set[str]]) -> list[str]:
    """One line per import that breaks the layering, naming the file and the import."""
    problems = []
    for wing in order:
        above = set(allowed.get(wing, set())) - set(order[: order.index(wing)])
        if above:
            problems.append(f"{wing}: its 'May import' names {sorted(above)}, which are not "
                            f"below it in {order}")
    for imp in imports:
        if not imp.target.startswith(PACKAGE):
            continue
        here, there = wing_of(imp.source), wing_of(imp.target)
        if here is None:
            continue  # the package top may import any wing
        if there is None:
            problems.append(f"{imp.file}:{imp.line}: `{imp.text}`: wing {here} imports the "
                            f"package top ({imp.target})")
            continue
        if there != here and there not in allowed.get(here, set()):
            problems.append(f"{imp.file}:{imp.line}: `{imp.text}`: wing {here} may import "
                            f"only {sorted(allowed.get(here, set())) or 'nothing'}, not {there}")
    return problems


def slicer_violations(imports: list[Import], slicer_wing: str = SLICER_WING) -> list[str]:
    return [f"{imp.file}:{imp.line}: `{imp.text}`: only the {slicer_wing} wing imports "
            f"{imp.target.split('.')[0]}"
            for imp in imports
            if imp.target.split(".")[0] in SLICER_ONLY and wing_of(imp.source) != slicer_wing]


def module_edges(imports: list[Import]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target.startswith(PACKAGE) and imp.target != imp.source:
            edges.setdefault(imp.source, set()).add(imp.target)
    return edges


# --------------------------------------------------------------------------------------------
# The engine as it is


def test_no_import_circles():
    imports = engine_imports()
    cycles = find_cycles(module_edges(imports))
    lines = []
    for cycle in cycles:
        members = set(cycle)
        lines += [f"  {i.file}:{i.line}: `{i.text}`" for i in imports
                  if i.source in members and i.target in members]
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles) + \
        "\n" + "\n".join(lines)


def test_wings_import_only_the_wings_below_them():
    order = declared_order()
    wings = sorted(p.parent.name for p in ENGINE.glob("*/__init__.py"))
    assert sorted(order) == wings, f"the package docstring's order {order} != wings {wings}"
    allowed = {wing: declared_imports(wing) for wing in order}
    problems = layering_violations(engine_imports(), order, allowed)
    assert not problems, "\n".join(problems)


def test_only_the_slicer_bridge_imports_slicer_qt_ctk_or_vtk():
    problems = slicer_violations(engine_imports())
    assert not problems, "\n".join(problems)
    # and the bridge does use them: the rule is about a real wing
    assert any(i.target.split(".")[0] == "slicer" for i in engine_imports()
               if wing_of(i.source) == SLICER_WING)


def test_every_engine_file_lies_in_a_wing_or_at_the_top():
    order = set(declared_order())
    for path in engine_files():
        rel = path.relative_to(ENGINE)
        if len(rel.parts) == 1:
            assert rel.name in TOP_FILES, f"{rel}: a module outside the wings"
        else:
            assert len(rel.parts) == 2 and rel.parts[0] in order, f"{rel}: not in a wing"


def test_no_engine_file_is_long_without_its_reason():
    long = []
    for path in engine_files():
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if n > MAX_LINES and COHESIVE not in doc:
            long.append(f"{path.relative_to(ROOT)}: {n} lines, and its docstring does not say "
                        f"why ('{COHESIVE} ...')")
    assert not long, "\n".join(long)


def test_every_wing_says_what_it_holds():
    for wing in declared_order():
        doc = ast.get_docstring(ast.parse((ENGINE / wing / "__init__.py").read_text(
            encoding="utf-8"))) or ""
        assert "Holds" in doc, f"{wing}/__init__.py: say what the wing holds"
        modules = {p.stem for p in (ENGINE / wing).glob("*.py") if p.stem != "__init__"}
        missing = sorted(m for m in modules if not re.search(rf"\b{m}\b", doc))
        assert not missing, f"{wing}/__init__.py does not name {missing}"


# --------------------------------------------------------------------------------------------
# The rules can fail


def _imp(source: str, target: str, line: int = 1) -> Import:
    return Import(source, source.replace(".", "/") + ".py", line, f"import {target}", target)


def test_find_cycles_finds_a_circle_and_nothing_else():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"a"}}) == [["a"]]


def test_an_upward_import_is_named_with_its_file_and_statement(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "_is_wing", lambda name: name in ("low", "high"))
    order = ["low", "high"]
    allowed = {"low": set(), "high": {"low"}}
    down = _imp("MotionSSIMLib.high.a", "MotionSSIMLib.low.b")
    up = _imp("MotionSSIMLib.low.b", "MotionSSIMLib.high.a", line=7)
    top = _imp("MotionSSIMLib.low.b", "MotionSSIMLib.cli", line=9)
    assert layering_violations([down], order, allowed) == []
    problems = layering_violations([down, up, top], order, allowed)
    assert len(problems) == 2
    assert problems[0].startswith("MotionSSIMLib/low/b.py:7: `import MotionSSIMLib.high.a`")
    assert "wing low may import only nothing, not high" in problems[0]
    assert "MotionSSIMLib/low/b.py:9" in problems[1] and "package top" in problems[1]
    # a declaration that points upwards is refused too
    assert layering_violations([], order, {"low": {"high"}, "high": set()})


def test_slicer_outside_the_bridge_is_named(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "_is_wing",
                        lambda name: name in ("imaging", "bridge"))
    ok = _imp("MotionSSIMLib.bridge.nodes", "slicer")
    bad = _imp("MotionSSIMLib.imaging.io", "vtk.util.numpy_support", line=3)
    assert slicer_violations([ok]) == []
    assert slicer_violations([ok, bad]) == [
        "MotionSSIMLib/imaging/io.py:3: `import vtk.util.numpy_support`: only the bridge wing "
        "imports vtk"]


def test_relative_imports_are_resolved():
    got = {(i.source, i.target) for i in imports_of(ENGINE / "imaging" / "io.py")}
    assert ("MotionSSIMLib.imaging.io", "MotionSSIMLib.base.errors") in got
    assert ("MotionSSIMLib.imaging.io", "MotionSSIMLib.imaging.dicom") in got
    assert ("MotionSSIMLib.imaging.io", "numpy") in got

"""The code that runs inside 3D Slicer must run on the oldest supported Slicer's Python.

Supported: Slicer 5.8 (embeds Python 3.9) and later (5.10+ embed Python 3.12). Every file that
Slicer loads or runs (both module files, the whole engine, the headless train.py) is checked:

- with our own AST rules (always): the Python 3.10+ features that compile on 3.9 but fail there
  at run time (``zip(strict=)``, ``isinstance(x, A | B)``, ``X | Y`` evaluated at run time,
  ``dataclass(slots=/kw_only=)``, newer ``typing`` names, ``itertools.pairwise``, ...);
- under a real Python 3.9 when the machine has one (pyenv's 3.9.x): every file compiles, and the
  modules that need nothing beyond the standard library are imported and exercised
  (process handling, dependency checks, the command lines' ``--help``);
- with ``vermin`` when it is installed (optional, not a requirement of the test suite).
"""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MINIMUM = (3, 9)  # Slicer 5.8
SLICER_FOLDERS = (ROOT / "MotionSSIM", ROOT / "MotionSSIMTraining")


def slicer_files() -> list[Path]:
    files = []
    for folder in SLICER_FOLDERS:
        files += [p for p in folder.rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)


# typing names added after 3.9 (importing them fails on 3.9)
NEW_TYPING = {"TypeAlias", "ParamSpec", "Concatenate", "TypeGuard", "Self", "Never",
              "LiteralString", "Required", "NotRequired", "Unpack", "TypeVarTuple",
              "assert_never", "assert_type", "reveal_type", "dataclass_transform", "override",
              "is_typeddict", "get_overloads", "clear_overloads", "TypeIs", "ReadOnly"}
NEW_ITERTOOLS = {"pairwise", "batched"}
TYPE_NAMES = {"None", "int", "float", "str", "bool", "bytes", "list", "tuple", "dict", "set",
              "frozenset", "type", "object", "Path", "Any"}


def _is_type_union(node: ast.AST) -> bool:
    """`A | B` where an operand is clearly a type (None, a builtin type, a typing name)."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)):
        return False

    def typeish(n):
        if isinstance(n, ast.Constant) and n.value is None:
            return True
        if isinstance(n, ast.Name) and n.id in TYPE_NAMES:
            return True
        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in TYPE_NAMES:
            return True
        return _is_type_union(n)

    return typeish(node.left) or typeish(node.right)


def python310_features(source: str, filename: str) -> list[str]:
    """Problems that make `source` fail on Python 3.9 (empty list = fine)."""
    tree = ast.parse(source, filename=filename)
    future_annotations = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    annotation_nodes = set()
    for node in ast.walk(tree):
        anns = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    anns.append(a.annotation)
            if node.returns is not None:
                anns.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        for ann in anns:
            annotation_nodes.update(id(n) for n in ast.walk(ann))

    problems = []

    def where(node):
        return f"{filename}:{getattr(node, 'lineno', '?')}"

    for node in ast.walk(tree):
        if type(node).__name__ in ("Match", "TryStar"):
            problems.append(f"{where(node)}: {type(node).__name__} statement (3.10+)")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            keywords = {k.arg for k in node.keywords}
            if name == "zip" and "strict" in keywords:
                problems.append(f"{where(node)}: zip(strict=) (3.10+)")
            if name in ("isinstance", "issubclass") and len(node.args) == 2:
                if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                       for n in ast.walk(node.args[1])):
                    problems.append(f"{where(node)}: {name}(x, A | B) (3.10+): use a tuple")
            if name == "dataclass" and keywords & {"slots", "kw_only", "match_args"}:
                problems.append(f"{where(node)}: dataclass({', '.join(sorted(keywords))}) (3.10+)")
            if name == "bit_count" and isinstance(func, ast.Attribute):
                problems.append(f"{where(node)}: int.bit_count() (3.10+)")
            if name in ("aiter", "anext") and isinstance(func, ast.Name):
                problems.append(f"{where(node)}: {name}() (3.10+)")
        if isinstance(node, ast.ImportFrom) and node.module in ("typing", "itertools"):
            new = NEW_TYPING if node.module == "typing" else NEW_ITERTOOLS
            for alias in node.names:
                if alias.name in new:
                    problems.append(f"{where(node)}: from {node.module} import {alias.name} (3.10+)")
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "typing" and node.attr in NEW_TYPING:
                problems.append(f"{where(node)}: typing.{node.attr} (3.10+)")
            if node.value.id == "itertools" and node.attr in NEW_ITERTOOLS:
                problems.append(f"{where(node)}: itertools.{node.attr} (3.10+)")
        if _is_type_union(node):
            in_annotation = id(node) in annotation_nodes
            if not in_annotation or not future_annotations:
                problems.append(f"{where(node)}: `X | Y` type union evaluated at run time (3.10+)")
    # report a nested union once
    return sorted(set(problems))


def test_rules_catch_what_fails_on_python39():
    """The checker itself: each of these lines fails on 3.9 and must be reported."""
    bad = textwrap.dedent(
        """
        import dataclasses
        from typing import TypeAlias
        a = list(zip([1], [2], strict=True))
        ok = isinstance(a, list | tuple)
        Alias = str | None
        def f(x: int | None) -> None: ...
        @dataclasses.dataclass(slots=True)
        class C: ...
        match a:
            case _: pass
        """
    )
    found = python310_features(bad, "bad.py")
    text = "\n".join(found)
    for expected in ("zip(strict=)", "isinstance(x, A | B)", "TypeAlias", "slots", "Match",
                     "type union"):
        assert expected in text, (expected, found)
    assert any(":7:" in p for p in found), "an annotation union without the __future__ import"
    # ...and these are fine on 3.9: annotations under `from __future__ import annotations`,
    # bitwise OR of arrays/ints, isinstance with a tuple
    good = textwrap.dedent(
        """
        from __future__ import annotations
        def f(x: int | None, y: list[str] | None = None) -> dict[str, int] | None:
            mask = x | 4
            return isinstance(y, (list, tuple)) and list(zip([1], [2]))
        """
    )
    assert python310_features(good, "good.py") == []


@pytest.mark.parametrize("path", slicer_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_that_runs_in_slicer_avoids_python310_features(path):
    problems = python310_features(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems, "fails on Slicer 5.8 (Python 3.9):\n" + "\n".join(problems)


def find_python39() -> str | None:
    """A Python 3.9 interpreter: $MOTIONSSIM_PYTHON39, python3.9 on PATH or pyenv's."""
    candidates = [os.environ.get("MOTIONSSIM_PYTHON39"), shutil.which("python3.9")]
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(root, "versions", "3.9*", "bin", "python3.9")))
    for candidate in candidates:
        if not candidate or not os.path.isfile(candidate):
            continue
        try:
            out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "(3, 9)":
            return candidate
    return None


PYTHON39 = find_python39()
needs_python39 = pytest.mark.skipif(PYTHON39 is None, reason="no Python 3.9 on this machine")


def run39(code: str, *args: str, cwd: Path = ROOT, timeout: float = 120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(str(f) for f in SLICER_FOLDERS)
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run([PYTHON39, "-c", code, *args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", env=env, cwd=cwd, timeout=timeout)


@needs_python39
def test_every_slicer_file_compiles_on_python39():
    code = textwrap.dedent(
        """
        import sys
        bad = []
        for path in sys.argv[1:]:
            try:
                compile(open(path, encoding="utf-8").read(), path, "exec", dont_inherit=True)
            except SyntaxError as exc:
                bad.append(f"{path}:{exc.lineno}: {exc.msg}")
        print("\\n".join(bad))
        sys.exit(1 if bad else 0)
        """
    )
    out = run39(code, *[str(p) for p in slicer_files()])
    assert out.returncode == 0, out.stdout + out.stderr


# Engine modules that import only the standard library at module level: imported for real on
# 3.9 (the others need numpy/torch, which a bare 3.9 lacks; the AST rules cover them).
STDLIB_ONLY = ["MotionSSIMLib", "MotionSSIMLib.base.errors", "MotionSSIMLib.cli",
               "MotionSSIMLib.training.training_cli", "MotionSSIMLib.base.settings",
               "MotionSSIMLib.bridge.processes", "MotionSSIMLib.bridge.dependencies",
               "MotionSSIMLib.base.jsonable"]


@needs_python39
def test_torch_free_modules_import_and_run_on_python39(tmp_path):
    code = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {STDLIB_ONLY!r}:
            importlib.import_module(name)
        from MotionSSIMLib.bridge import dependencies, processes
        from MotionSSIMLib.base.jsonable import jsonable
        # JSON cleaning without numpy: NaN -> None, tuples -> lists, paths -> str, str keys
        import pathlib
        cleaned = jsonable({{1: (float("nan"), pathlib.Path("a"))}})
        assert cleaned == {{"1": [None, "a"]}}, cleaned
        # the dependency report on a 3.9 without torch: parses requirements, says what is missing
        report = dependencies.check(dependencies.read_requirements(sys.argv[1]))
        assert "torch" in report.missing_names(), report.missing_names()
        assert report.text()
        # a child process started in its own group, read with replacement, ended as a tree
        job = processes.start([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'a\\\\xffb\\\\n')"])
        job.wait(timeout=30)
        lines = job.take_lines()
        assert lines == ["a\\ufffdb"], lines
        print("ok")
        """
    )
    out = run39(code, str(ROOT / "MotionSSIM" / "Resources" / "requirements.txt"), cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr


@needs_python39
def test_command_line_help_runs_on_python39(tmp_path):
    """`python -m MotionSSIMLib --help` parses on 3.9 (torch is imported by the commands), and
    the headless train.py finds the engine on 3.9 (it stops at the missing torch, not before)."""
    out = run39("import runpy; runpy.run_module('MotionSSIMLib', run_name='__main__')",
                "--help", cwd=tmp_path)
    assert out.returncode == 0 and "assess" in out.stdout, out.stdout + out.stderr
    script = ROOT / "MotionSSIMTraining" / "MotionSSIMTrainingScripts" / "train.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run([PYTHON39, str(script), "--help"], capture_output=True, text=True,
                         encoding="utf-8", errors="replace", env=env, cwd=tmp_path, timeout=120)
    tail = out.stderr.strip().splitlines()[-1:] if out.returncode else []
    assert out.returncode == 0 or tail == ["ModuleNotFoundError: No module named 'torch'"], (
        out.stdout + out.stderr)


def test_vermin_minimum_version_if_installed():
    vermin = pytest.importorskip("vermin", reason="vermin is optional (pip install vermin)")
    del vermin
    out = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "--no-tips", "--violations", "-t=3.9-",
         "--eval-annotations", *[str(f) for f in SLICER_FOLDERS]],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr

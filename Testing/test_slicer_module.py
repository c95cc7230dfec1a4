"""Static checks of the two Slicer modules (their Qt parts cannot run outside Slicer).

- the .ui files parse, every widget the code uses (self.ui.X) exists in them, every custom
  widget class is declared;
- every SlicerParameterName in a .ui names a field of the module's parameterNodeWrapper class,
  every field is bound to a widget, and the widget type is one the parameter node wrapper can
  connect to that field type (the rules of slicer.parameterNodeWrapper's GUI connectors);
- the module files parse and import nothing heavy at module level (no torch: Slicer must load
  the module before PyTorch is installed);
- each module has a ScriptedLoadableModuleTest whose runTest calls test_* methods that run the
  module's Logic on a volume created in the scene (what Slicer's CI runs).
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = {
    "MotionSSIM": ROOT / "MotionSSIM" / "MotionSSIM.py",
    "MotionSSIMTraining": ROOT / "MotionSSIMTraining" / "MotionSSIMTraining.py",
}
HEAVY = {"torch", "torchvision", "torchio", "safetensors", "skimage", "scipy", "nibabel", "PyTorchUtils"}

# widget class -> field types the parameter node wrapper connects it to (see guiConnectors.py)
CONNECTABLE = {
    "QCheckBox": {"bool"},
    "QPushButton": {"bool"},
    "QSpinBox": {"int"},
    "QSlider": {"int"},
    "QDoubleSpinBox": {"float"},
    "ctkSliderWidget": {"float"},
    "QComboBox": {"str-choice", "int-choice", "float-choice"},
    "QLineEdit": {"str"},
    "QTextEdit": {"str"},
    "ctkPathLineEdit": {"path"},
    "ctkDirectoryButton": {"path"},
    "qMRMLNodeComboBox": {"node"},
}
RANGED = {"QSpinBox", "QSlider", "ctkSliderWidget"}  # connectors that need WithinRange bounds


def parse(name):
    return ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))


def ui_path(name):
    return MODULES[name].parent / "Resources" / "UI" / f"{name}.ui"


def ui_widgets(name) -> dict[str, tuple[str, str | None]]:
    """widget name -> (class, SlicerParameterName or None)."""
    root = ET.parse(ui_path(name)).getroot()
    widgets = {}
    for w in root.iter("widget"):
        param = None
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                param = prop.find("string").text
        assert w.get("name") not in widgets, f"duplicate widget name {w.get('name')}"
        widgets[w.get("name")] = (w.get("class"), param)
    return widgets


def module_constants(tree) -> dict:
    """Module-level NAME = <literal> assignments."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return out


def literal(node, constants):
    """A literal, a module constant, or CONSTANT[index]; None when it is none of those."""
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        return constants.get(node.value.id, [None])[ast.literal_eval(node.slice)]
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def parameter_fields(tree) -> dict[str, dict]:
    """Fields of the @parameterNodeWrapper class: name -> {kind, choices, ranged, default}."""
    constants = module_constants(tree)
    classes = [
        n
        for n in tree.body
        if isinstance(n, ast.ClassDef)
        and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in n.decorator_list)
    ]
    assert len(classes) == 1, "exactly one @parameterNodeWrapper class per module"
    fields = {}
    for stmt in classes[0].body:
        if not isinstance(stmt, ast.AnnAssign):
            continue
        ann = stmt.annotation
        info = {"choices": None, "ranged": False, "default": None}
        if stmt.value is not None:
            info["default"] = literal(stmt.value, constants)
        if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", None) == "Annotated":
            base, *extras = ann.slice.elts
            for extra in extras:
                func = getattr(extra.func, "id", None)
                if func == "Choice":
                    info["choices"] = literal(extra.args[0], constants)
                if func == "WithinRange":
                    info["ranged"] = True
        else:
            base = ann
        text = ast.unparse(base)
        if text in ("bool", "int", "float", "str"):
            kind = text if info["choices"] is None else f"{text}-choice"
        elif text in ("pathlib.Path", "Path"):
            kind = "path"
        elif text.startswith("vtkMRML") or text.startswith("slicer.vtkMRML"):
            kind = "node"
        else:
            kind = text
        info["kind"] = kind
        fields[stmt.target.id] = info
    return fields


def ui_attributes_used(tree) -> set[str]:
    """Every X in self.ui.X."""
    used = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            used.add(node.attr)
    return used


@pytest.mark.parametrize("name", sorted(MODULES))
def test_ui_parses_and_declares_custom_widgets(name):
    root = ET.parse(ui_path(name)).getroot()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget", "setMRMLScene() needs a qMRMLWidget at the top"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    for cls, _ in ui_widgets(name).values():
        if cls.startswith(("ctk", "qMRML", "qSlicer")):
            assert cls in declared, f"{cls} used but not declared in <customwidgets>"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_ui_widget_the_code_uses_exists(name):
    widgets = ui_widgets(name)
    used = ui_attributes_used(parse(name))
    assert used, "the widget code uses self.ui"
    missing = sorted(used - set(widgets))
    assert not missing, f"{name}.py uses widgets missing from {name}.ui: {missing}"
    # the UI file the widget loads is this one
    assert f'"UI/{name}.ui"' in MODULES[name].read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_parameter_names_map_to_fields_with_connectable_widgets(name):
    fields = parameter_fields(parse(name))
    bound = {}
    for widget, (cls, param) in ui_widgets(name).items():
        if param is None:
            continue
        assert param in fields, f"{widget}: SlicerParameterName {param!r} is not a parameter field"
        assert param not in bound, f"{param} bound to two widgets"
        bound[param] = widget
        kind = fields[param]["kind"]
        assert kind in CONNECTABLE.get(cls, set()), (
            f"{widget} ({cls}) cannot be connected to {param} ({kind})"
        )
        if cls in RANGED:
            assert fields[param]["ranged"], f"{param}: {cls} needs WithinRange bounds"
    assert set(fields) == set(bound), f"fields without a widget: {sorted(set(fields) - set(bound))}"
    for param, info in fields.items():
        if info["choices"] is not None and info["default"] is not None:
            assert info["default"] in info["choices"], f"{param}: default not among the choices"


def top_level_imports(tree) -> set[str]:
    """Modules imported when the file is imported (module body, incl. top-level if/try)."""
    names = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return names


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_nothing_heavy(name):
    imports = top_level_imports(parse(name))
    roots = {i.split(".")[0] for i in imports}
    assert not roots & HEAVY, f"heavy imports at module level: {sorted(roots & HEAVY)}"
    # the engine is imported lazily too (its package is cheap, but torch hides behind it)
    assert "MotionSSIMLib" not in roots
    assert {"slicer", "qt", "vtk"} <= roots  # sanity: this is a Slicer module file


def test_scene_bridge_imports_only_mrml_vtk_and_numpy():
    tree = ast.parse((ROOT / "MotionSSIM" / "MotionSSIMLib" / "scene.py").read_text())
    roots = {i.split(".")[0] if not i.startswith(".") else i for i in top_level_imports(tree)}
    allowed = {"__future__", "json", "math", "collections", "dataclasses", "typing", "numpy",
               "slicer", "vtk", ".errors"}
    assert roots <= allowed, f"unexpected imports in scene.py: {sorted(roots - allowed)}"


def classes_by_base(tree, base):
    return [
        n
        for n in tree.body
        if isinstance(n, ast.ClassDef) and any(ast.unparse(b) == base for b in n.bases)
    ]


def calls_in(node) -> set[str]:
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            out.add(ast.unparse(sub.func).split("(")[0])
    return out


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_classes_and_self_test_structure(name):
    tree = parse(name)
    module = classes_by_base(tree, "ScriptedLoadableModule")
    assert [c.name for c in module] == [name]
    source = ast.unparse(module[0])
    for attr in ("title", "categories", "helpText", "acknowledgementText", "contributors"):
        assert f"self.parent.{attr}" in source
    assert "Chatterjee" in source or "Sciarra" in source, "cite the method paper"
    assert [c.name for c in classes_by_base(tree, "ScriptedLoadableModuleLogic")] == [f"{name}Logic"]
    widget = [
        c.name
        for c in tree.body
        if isinstance(c, ast.ClassDef)
        and "ScriptedLoadableModuleWidget" in [ast.unparse(b) for b in c.bases]
    ]
    assert widget == [f"{name}Widget"]

    tests = classes_by_base(tree, "ScriptedLoadableModuleTest")
    assert [c.name for c in tests] == [f"{name}Test"]
    methods = {f.name: f for f in tests[0].body if isinstance(f, ast.FunctionDef)}
    assert "runTest" in methods and "setUp" in methods
    called = {c.split(".")[-1] for c in calls_in(methods["runTest"]) if c.startswith("self.")}
    test_methods = {m for m in methods if m.startswith("test_")}
    assert test_methods and test_methods <= called, f"runTest misses {sorted(test_methods - called)}"
    assert "slicer.mrmlScene.Clear" in calls_in(methods["setUp"])

    # at least one test runs the Logic on a volume it creates in the scene (directly or through
    # a helper method of the test class)
    def reaches(method, seen=()):
        calls = calls_in(methods[method])
        for call in list(calls):
            helper = call.split(".")[-1]
            if call.startswith("self.") and helper in methods and helper not in seen:
                calls |= reaches(helper, (*seen, method))
        return calls

    exercised = [
        m
        for m in test_methods
        if f"{name}Logic" in reaches(m)
        and any("addVolumeFromArray" in c for c in reaches(m))
    ]
    assert exercised, "no test_* method runs the Logic on a volume created in the scene"


def test_motionssim_logic_process_signature_is_the_documented_one():
    tree = parse("MotionSSIM")
    logic = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "MotionSSIMLogic")
    process = next(f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name == "process")
    args = [a.arg for a in process.args.args]
    assert args[:3] == ["self", "inputVolume", "model"]
    for required in ("orientation", "device", "goodThreshold", "sufficientThreshold", "progress", "cancel"):
        assert required in args
    # dependencies are installed on demand (Apply), never when the file is imported
    ensure = next(f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name == "ensureDependencies")
    text = ast.unparse(ensure)
    assert "PyTorchUtils" in text and "installTorch" in text
    assert "pip_ensure" in text and "pip_install" in text


def test_requirements_never_replace_slicer_packages():
    from packaging.requirements import Requirement

    path = ROOT / "MotionSSIM" / "Resources" / "requirements.txt"
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(Requirement(line).name.lower())
    assert names, "requirements.txt lists the packages installed at first use"
    assert not set(names) & {"numpy", "simpleitk", "vtk", "torch", "torchvision"}
    assert "torchio" in names and "safetensors" in names

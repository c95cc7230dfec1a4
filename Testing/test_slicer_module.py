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


@pytest.mark.parametrize("name", ["nodes", "volume_results", "series_results", "node_jobs"])
def test_scene_bridge_imports_only_mrml_vtk_and_numpy(name):
    tree = ast.parse((ROOT / "MotionSSIM" / "MotionSSIMLib" / "bridge" / f"{name}.py").read_text())
    roots = {i.split(".")[0] if not i.startswith(".") else i for i in top_level_imports(tree)}
    allowed = {"__future__", "json", "math", "collections", "dataclasses", "typing", "numpy",
               "slicer", "vtk", "..base.errors",
               # torch-free engine modules (numpy and the standard library only)
               "..assessment.classes", "..base.jsonable",
               # the bridge's own scene modules
               ".nodes", ".volume_results", ".series_results"}
    assert roots <= allowed, f"unexpected imports in {name}.py: {sorted(roots - allowed)}"


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


def function(tree, class_name, name):
    cls = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == class_name)
    return next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == name)


def module_function(tree, name):
    return next(f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == name)


def test_motionssim_logic_process_signature_is_the_documented_one():
    tree = parse("MotionSSIM")
    process = function(tree, "MotionSSIMLogic", "process")
    args = [a.arg for a in process.args.args]
    assert args[:3] == ["self", "inputVolume", "model"]
    for required in ("orientation", "device", "goodThreshold", "sufficientThreshold", "progress", "cancel"):
        assert required in args
    # settings are validated (labelmap, sufficient >= good, Slicer version) before any work
    assert "node_jobs.validate_settings" in calls_in(process)


# slicer.util functions that open a window (Slicer's util.py), and Qt dialogs
DIALOGS = {"confirmOkCancelDisplay", "confirmYesNoDisplay", "confirmRetryCloseDisplay",
           "infoDisplay", "warningDisplay", "errorDisplay", "messageBox", "createProgressDialog",
           "tryWithErrorDisplay", "QMessageBox", "QFileDialog", "QInputDialog", "QProgressDialog"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_logic_opens_no_dialog(name):
    """The Logic runs in batch mode (console, scripts, --no-main-window): the Widget asks."""
    tree = parse(name)
    logic = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == f"{name}Logic")
    used = {c.split(".")[-1] for c in calls_in(logic)}
    names = {n.attr for n in ast.walk(logic) if isinstance(n, ast.Attribute)}
    assert not (used | names) & DIALOGS, sorted((used | names) & DIALOGS)
    assert "processEvents" not in names, "the Logic must not pump the GUI event loop"


def test_dependencies_are_installed_by_the_logic_and_confirmed_by_the_widget():
    tree = parse("MotionSSIM")
    install = ast.unparse(function(tree, "MotionSSIMLogic", "installDependencies"))
    assert "PyTorchUtils" in install and "installTorch" in install
    assert "askConfirmation=False" in install and "pip_install" in install
    # torch and torchvision versions are checked, not only their presence
    assert "TORCH_REQUIREMENT" in install and "TORCHVISION_REQUIREMENT" in install
    report = ast.unparse(function(tree, "MotionSSIMLogic", "dependencyReport"))
    assert "dependencies.check" in report
    confirm = module_function(tree, "ensureDependenciesWithConfirmation")
    assert "slicer.util.confirmOkCancelDisplay" in calls_in(confirm)
    assert "logic.installDependencies" in calls_in(confirm)
    for name in MODULES:  # both modules go through the same confirmation
        assert "ensureDependenciesWithConfirmation" in MODULES[name].read_text(encoding="utf-8")


def test_opening_the_panel_does_not_import_torch():
    tree = parse("MotionSSIM")
    info = function(tree, "MotionSSIMLogic", "torchInfo")
    imports = {a.name for n in ast.walk(info) if isinstance(n, ast.Import) for a in n.names}
    assert "torch" not in imports and "dependencies.torch_build_info" in calls_in(info)
    setup = function(tree, "MotionSSIMWidget", "setup")
    assert "self.logic.torchInfo" in calls_in(setup)
    assert "loaded=True" not in ast.unparse(setup)


def test_apply_runs_off_the_gui_thread_and_turns_into_cancel():
    tree = parse("MotionSSIM")
    for cls in ("MotionSSIMWidget", "MotionSSIMLogic"):
        node = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == cls)
        assert "processEvents" not in ast.unparse(node), f"{cls}: no event pumping in a computation"
    apply = function(tree, "MotionSSIMWidget", "onApplyButton")
    text = ast.unparse(apply)
    assert "self.logic.startAssessment(" in text and "self._job.cancel" in text
    assert "self._setInputsEnabled(False)" in text and "self._timer.start" in text
    # the job is a child process of Slicer's Python (a thread would crawl: Slicer's idle main
    # thread holds the GIL; Testing/test_jobs.py measures it), started with Slicer's
    # environment, its temporary copy in Slicer's temporary folder
    start = ast.unparse(function(tree, "MotionSSIMLogic", "startAssessment"))
    assert "jobs.ChildProcess(env=slicer.util.startupEnvironment()" in start
    assert "temp_root=slicer.app.temporaryPath" in start
    assert "node_jobs.validate_settings" in start
    poll = ast.unparse(function(tree, "MotionSSIMWidget", "onPollJob"))
    assert "job.poll()" in poll  # reads the child's progress without blocking
    assert "job.finish()" in poll and "self._setInputsEnabled(True)" in poll
    # the console API stays synchronous, in this process
    process = ast.unparse(function(tree, "MotionSSIMLogic", "process"))
    assert "node_jobs.assess_volume_node(" in process and "startAssessment" not in process
    check = ast.unparse(function(tree, "MotionSSIMWidget", "_checkCanApply"))
    assert "'Cancel'" in check and "validate_settings" in check
    disable = ast.unparse(function(tree, "MotionSSIMWidget", "_setInputsEnabled"))
    assert "inputsCollapsibleButton" in disable and "advancedCollapsibleButton" in disable
    # a scene close or the input's deletion cancels the job (finish() then writes nothing)
    assert "self._job.cancel" in ast.unparse(function(tree, "MotionSSIMWidget", "onSceneStartClose"))
    removed = function(tree, "MotionSSIMWidget", "onNodeAboutToBeRemoved")
    assert "self._job.cancel" in ast.unparse(removed)
    assert any("calldata_type" in ast.unparse(d) for d in removed.decorator_list)
    setup = ast.unparse(function(tree, "MotionSSIMWidget", "setup"))
    assert "NodeAboutToBeRemovedEvent" in setup


def test_slice_view_text_is_cleared_when_there_is_no_result():
    tree = parse("MotionSSIM")
    for method in ("onInputChanged", "onSceneStartClose", "onNodeAboutToBeRemoved", "onSliceModified"):
        assert "self._clearViewText" in calls_in(function(tree, "MotionSSIMWidget", method)), method
    clear = ast.unparse(function(tree, "MotionSSIMWidget", "_clearViewText"))
    assert "SetText(vtk.vtkCornerAnnotation.UpperEdge, '')" in clear


def test_training_stop_ends_the_process_tree_without_sleeping_on_the_gui_thread():
    tree = parse("MotionSSIMTraining")
    source = MODULES["MotionSSIMTraining"].read_text(encoding="utf-8")
    assert ".terminate()" not in source and "launchConsoleProcess(" not in source
    # Job.kill() sleeps until the tree is gone: never on the GUI thread (nor time.sleep
    # outside the self-test); stop() returns at once and poll() (the timer) escalates
    logic = ast.unparse(next(c for c in tree.body if isinstance(c, ast.ClassDef)
                             and c.name == "MotionSSIMTrainingLogic"))
    widget = ast.unparse(next(c for c in tree.body if isinstance(c, ast.ClassDef)
                              and c.name == "MotionSSIMTrainingWidget"))
    for text in (logic, widget):
        assert ".kill(" not in text and "time.sleep" not in text and "QTimer" not in logic
    start = ast.unparse(function(tree, "MotionSSIMTrainingLogic", "_start"))
    assert "processes.start" in start and "startupEnvironment" in start
    assert "log_path=" in start  # output into a file read by the timer: no reader thread
    assert "self._job.stop(" in ast.unparse(function(tree, "MotionSSIMTrainingLogic", "requestStop"))
    poll = ast.unparse(function(tree, "MotionSSIMTrainingLogic", "poll"))
    assert "self._job.stop(" in poll and "self._job.step()" in poll
    assert "_stopDeadline" in poll  # the minute after Stop is counted here, not by a sleep


def test_training_is_tied_to_the_panel_and_to_slicer():
    """The run's own folders (RunSettings), inputs locked while it runs, stopped on cleanup and
    when Slicer quits, a folder held by a live trainer refused, a crash not called a stop."""
    tree = parse("MotionSSIMTraining")
    start = ast.unparse(function(tree, "MotionSSIMTrainingLogic", "startTraining"))
    assert "folder_lock.holder(" in start and "self.run = RunSettings(p)" in start
    assert "aboutToQuit()" in ast.unparse(function(tree, "MotionSSIMTrainingLogic", "_start"))
    shutdown = ast.unparse(function(tree, "MotionSSIMTrainingLogic", "shutdown"))
    assert "self._job.interrupt()" in shutdown
    assert "self.logic.shutdown()" in ast.unparse(
        function(tree, "MotionSSIMTrainingWidget", "cleanup"))
    buttons = ast.unparse(function(tree, "MotionSSIMTrainingWidget", "_updateButtons"))
    assert "dataCollapsibleButton" in buttons and "trainingCollapsibleButton" in buttons
    assert "widget.enabled = not running" in buttons
    poll = ast.unparse(function(tree, "MotionSSIMTrainingWidget", "onPoll"))
    assert "run.outputFolder" in poll and "p.outputFolder" not in poll
    assert "self.logic.startEvaluation()" in poll
    evaluation = ast.unparse(function(tree, "MotionSSIMTrainingLogic", "startEvaluation"))
    assert "run.trainingData" in evaluation and "p." not in evaluation
    status = ast.unparse(function(tree, "MotionSSIMTrainingLogic", "poll"))
    assert "code == EXIT_STOPPED" in status and "code == 1" not in status
    close = ast.unparse(function(tree, "MotionSSIMTrainingWidget", "onSceneStartClose"))
    assert "self._shownChartID = None" in close  # node IDs start again after a close
    report = ast.unparse(function(tree, "MotionSSIMTrainingWidget", "_showReport"))
    assert "setSearchPaths(" in report  # the report's PNGs are found beside it


def test_training_data_can_be_a_folder_or_a_split_file():
    tree = parse("MotionSSIMTraining")
    setup = ast.unparse(function(tree, "MotionSSIMTrainingWidget", "setup"))
    assert "ctk.ctkPathLineEdit.Dirs | " not in setup  # Files|Dirs: a file dialog only
    for name in ("trainingDataFolderButton", "validationDataFolderButton"):
        assert f"self.ui.{name}.connect" in setup
    choose = ast.unparse(function(tree, "MotionSSIMTrainingWidget", "onChooseFolder"))
    assert "getExistingDirectory" in choose
    evaluate = ast.unparse(function(tree, "MotionSSIMTrainingLogic", "startEvaluation"))
    assert "held_out_test_volumes" in evaluate


def test_sample_data_is_registered():
    tree = parse("MotionSSIM")
    module = ast.unparse(next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "MotionSSIM"))
    assert "startupCompleted()" in module and "registerSampleData" in module
    register = ast.unparse(module_function(tree, "registerSampleData"))
    assert "registerCustomSampleDataSource" in register
    constants = module_constants(tree)
    assert (ROOT / "MotionSSIM" / "Resources" / "Samples" / constants["SAMPLE_FILE"]).is_file()


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


@pytest.mark.parametrize("name", sorted(MODULES))
def test_parameter_node_is_connected_once(name):
    """Slicer 5.8's connectGui returns None, so disconnectGui(None) leaves the old connectors
    live, and a new connector clears the comboboxes (issue 7545): a chosen checkpoint became
    the bundled model on every module entry. Connect once per parameter node, with
    connectParametersToGui (a tag on 5.8 and 5.10), and keep it connected on exit()."""
    tree = parse(name)
    widget = f"{name}Widget"
    source = MODULES[name].read_text(encoding="utf-8")
    assert ".connectGui(" not in source
    setter = ast.unparse(function(tree, widget, "setParameterNode"))
    assert "sameParameterNode(inputParameterNode, self._parameterNode)" in setter
    assert "connectParametersToGui(" in setter and "parameterWidgets(self.ui, skip=" in setter
    exit_ = function(tree, widget, "exit")
    assert "disconnectGui" not in ast.unparse(exit_)
    assert "self.setParameterNode(None)" in ast.unparse(function(tree, widget, "cleanup"))


def test_parameter_widgets_finds_what_connectgui_finds():
    """parameterWidgets replicates connectGui's search (wrapper.py: the ui's attributes with a
    SlicerParameterName property); checked with stand-in widgets."""
    import types

    tree = parse("MotionSSIM")
    namespace = {}
    exec(compile(ast.Module(body=[module_function(tree, "parameterWidgets"),
                                  module_function(tree, "sameParameterNode")],
                            type_ignores=[]), "MotionSSIM.py", "exec"), namespace)

    class Widget:
        def __init__(self, parameter):
            self.parameter = parameter

        def property(self, key):
            return self.parameter if key == "SlicerParameterName" else None

    combo, label, edit = Widget("device"), Widget(None), Widget("modelPath")
    ui = types.SimpleNamespace(deviceComboBox=combo, label=label, modelPathLineEdit=edit,
                               layout=object())
    assert namespace["parameterWidgets"](ui) == {"device": combo, "modelPath": edit}
    assert namespace["parameterWidgets"](ui, skip={"modelPath": edit}) == {"device": combo}
    node = object()
    same = namespace["sameParameterNode"]
    assert same(types.SimpleNamespace(parameterNode=node), types.SimpleNamespace(parameterNode=node))
    assert not same(types.SimpleNamespace(parameterNode=node), None)
    assert not same(types.SimpleNamespace(parameterNode=node),
                    types.SimpleNamespace(parameterNode=object()))
    # the names it finds are exactly the .ui's SlicerParameterName properties
    assert {p for _, p in ui_widgets("MotionSSIM").values() if p} == set(
        parameter_fields(tree))


def test_unset_path_fields_show_nothing():
    """An unset pathlib.Path parameter reads '.', which the wrapper's ctkPathLineEdit connector
    shows (serializers.py, guiConnectors.py); PathFields shows an empty field instead and writes
    the user's edits back. Checked with a stand-in line edit and parameter node."""
    import pathlib
    import types

    tree = parse("MotionSSIM")
    path_fields = next(c for c in tree.body if isinstance(c, ast.ClassDef)
                       and c.name == "PathFields")
    namespace = {"pathlib": pathlib}
    exec(compile(ast.Module(body=[module_function(tree, "pathText"), path_fields],
                            type_ignores=[]), "MotionSSIM.py", "exec"), namespace)
    pathText, PathFields = namespace["pathText"], namespace["PathFields"]
    assert pathText(pathlib.Path()) == "" and pathText(None) == ""
    assert pathText(pathlib.Path("/data/m.safetensors")) == "/data/m.safetensors"

    class LineEdit:
        def __init__(self):
            self.currentPath, self.blocked, self.slots = "", False, []

        def connect(self, signal, slot):
            assert signal == "currentPathChanged(QString)"
            self.slots.append(slot)

        def blockSignals(self, block):
            was, self.blocked = self.blocked, block
            return was

        def type(self, text):  # the user edits the field
            self.currentPath = text
            if not self.blocked:
                for slot in self.slots:
                    slot(text)

    edit = LineEdit()
    fields = PathFields({"modelPath": edit})
    node = types.SimpleNamespace(modelPath=pathlib.Path())
    fields.setNode(node)
    assert edit.currentPath == ""  # not "."
    edit.type("/data/m.safetensors")
    assert node.modelPath == pathlib.Path("/data/m.safetensors")
    edit.type("")
    assert node.modelPath == pathlib.Path() and edit.currentPath == ""
    node.modelPath = pathlib.Path("/x/y.safetensors")  # set from code or a loaded scene
    fields.update()
    assert edit.currentPath == "/x/y.safetensors" and not edit.blocked
    assert len(edit.slots) == 1  # connected once, whatever the parameter nodes
    fields.setNode(None)
    edit.type("/z")  # no node: nothing written, nothing raised
    # both modules bind their path fields through it, and leave them out of the wrapper's GUI
    for name, paths in (("MotionSSIM", {"modelPath"}),
                        ("MotionSSIMTraining", {"trainingData", "validationData", "outputFolder"})):
        source = (ROOT / name / f"{name}.py").read_text()
        assert "PathFields({" in source and "skip=self._pathFields.widgets" in source
        assert "self._pathFields.setNode(self._parameterNode)" in source
        assert "self._pathFields.update()" in source
        assert all(f'"{p}":' in source for p in paths)


def test_installation_dialogs_are_not_under_a_wait_cursor_and_restart_is_offered():
    for name in MODULES:
        tree = parse(name)
        start = "onApplyButton" if name == "MotionSSIM" else "onStartButton"
        text = ast.unparse(function(tree, f"{name}Widget", start))
        assert "waitCursor=True" not in text, name
    tree = parse("MotionSSIM")
    confirm = ast.unparse(module_function(tree, "ensureDependenciesWithConfirmation"))
    assert "with slicer.util.WaitCursor():" in confirm and "offerRestart(" in confirm
    restart = ast.unparse(module_function(tree, "offerRestart"))
    assert "slicer.util.confirmYesNoDisplay" in restart and "slicer.util.restart()" in restart


def test_packages_are_installed_under_constraints_with_package_info_and_force_reinstall():
    tree = parse("MotionSSIM")
    install = ast.unparse(function(tree, "MotionSSIMLogic", "installDependencies"))
    assert "dependencies.write_constraints(" in install and "dependencies.pip_arguments(" in install
    assert "dependencies.offline_message(" in install  # offline: one line, not a traceback
    assert "force=True" in install
    setup = ast.unparse(function(tree, "MotionSSIMWidget", "setup"))
    assert "self.ui.packageInfoButton.connect" in setup
    assert "self.ui.forceReinstallButton.connect" in setup
    assert "dependencies.package_info(" in ast.unparse(
        function(tree, "MotionSSIMLogic", "packageInfo"))


def test_self_test_skips_when_any_requirement_is_missing():
    tree = parse("MotionSSIM")
    skip = ast.unparse(function(tree, "MotionSSIMTest", "_skippedWithoutTorch"))
    assert "dependencyReport()" in skip and "report.ok" in skip


def test_training_module_declares_its_dependency():
    tree = parse("MotionSSIMTraining")
    module = ast.unparse(next(c for c in tree.body if isinstance(c, ast.ClassDef)
                              and c.name == "MotionSSIMTraining"))
    assert "self.parent.dependencies = ['MotionSSIM']" in module

"""Extension packaging: CMake lists agree with the files, metadata, index entry, icons, licence."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIRS = ("MotionSSIM", "MotionSSIMTraining")
# Keys the Extensions Index catalog-entry schema v1.0.1 allows (additionalProperties: false).
INDEX_KEYS = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled",
              "scm_revision", "scm_type", "scm_url", "tier"}
INDEX_REQUIRED = {"$schema", "category", "scm_url"}


def cmake_text(path: Path) -> str:
    """CMake source without comments."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


def cmake_sets(path: Path) -> dict[str, list[str]]:
    """set(NAME values...) of a CMakeLists, with ${MODULE_NAME} substituted."""
    text = cmake_text(path)
    sets = {}
    for name, body in re.findall(r"set\(\s*(\w+)\s+(.*?)\)", text, flags=re.S):
        sets[name] = re.findall(r'"[^"]*"|[^\s]+', body)
    module = sets.get("MODULE_NAME", [""])[0]
    return {
        k: [v.replace("${MODULE_NAME}", module).strip('"') for v in vals] for k, vals in sets.items()
    }


def listed_files(module: str) -> list[str]:
    sets = cmake_sets(ROOT / module / "CMakeLists.txt")
    return (
        sets.get("MODULE_PYTHON_SCRIPTS", [])
        + sets.get("MODULE_PYTHON_RESOURCES", [])
        + sets.get("MODULE_SUBPROCESS_SCRIPTS", [])
    )


@pytest.mark.parametrize("module", MODULE_DIRS)
def test_every_listed_file_exists(module):
    sets = cmake_sets(ROOT / module / "CMakeLists.txt")
    assert sets["MODULE_NAME"] == [module]
    files = listed_files(module)
    assert files
    missing = [f for f in files if not (ROOT / module / f).is_file()]
    assert not missing, f"{module}/CMakeLists.txt lists missing files: {missing}"
    assert len(files) == len(set(files)), "a file is listed twice"


@pytest.mark.parametrize("module", MODULE_DIRS)
def test_every_module_file_is_listed(module):
    folder = ROOT / module
    on_disk = {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and (p.suffix == ".py" or p.parent.name in ("Icons", "UI") or p.name == "requirements.txt")
    }
    unlisted = sorted(on_disk - set(listed_files(module)))
    assert not unlisted, f"{module}/CMakeLists.txt does not list: {unlisted}"


def test_engine_package_is_listed_file_by_file():
    scripts = cmake_sets(ROOT / "MotionSSIM" / "CMakeLists.txt")["MODULE_PYTHON_SCRIPTS"]
    lib = ROOT / "MotionSSIM" / "MotionSSIMLib"
    engine = sorted(p.relative_to(lib).as_posix() for p in lib.rglob("*.py")
                    if "__pycache__" not in p.parts)
    assert any("/" in name for name in engine), "the wings' files are found too"
    assert engine and all(f"MotionSSIMLib/{name}" in scripts for name in engine)
    assert not any("*" in s for s in scripts), "no globbing"
    # the bundled default model ships with the module
    resources = cmake_sets(ROOT / "MotionSSIM" / "CMakeLists.txt")["MODULE_PYTHON_RESOURCES"]
    assert any(r.startswith("Resources/Models/") and r.endswith(".safetensors") for r in resources)


@pytest.mark.parametrize("module", MODULE_DIRS)
def test_module_cmake_builds_and_tests_the_module(module):
    text = cmake_text(ROOT / module / "CMakeLists.txt")
    assert "slicerMacroBuildScriptedModule(" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    assert "BUILD_TESTING" in text


def test_train_script_is_outside_the_scanned_module_folder():
    """Slicer's module factory loads every .py file directly in a module folder as a module
    ("class train was not found" at each start-up when the source folder is a module path).
    train.py lives in MotionSSIMTrainingScripts/ in the source tree and is installed there."""
    sets = cmake_sets(ROOT / "MotionSSIMTraining" / "CMakeLists.txt")
    script = "MotionSSIMTrainingScripts/train.py"
    assert sets["MODULE_SUBPROCESS_SCRIPTS"] == [script]
    assert (ROOT / "MotionSSIMTraining" / script).is_file()
    assert not (ROOT / "MotionSSIMTraining" / "train.py").exists()
    assert script not in sets["MODULE_PYTHON_SCRIPTS"] + sets["MODULE_PYTHON_RESOURCES"]
    text = cmake_text(ROOT / "MotionSSIMTraining" / "CMakeLists.txt")
    assert "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${script}" in text and "install(" in text
    logic = (ROOT / "MotionSSIMTraining" / "MotionSSIMTraining.py").read_text()
    assert '"MotionSSIMTrainingScripts", "train.py"' in logic


@pytest.mark.parametrize("module", MODULE_DIRS)
def test_module_folders_hold_only_module_files(module):
    """Every .py directly in a module folder is loaded by Slicer as a module named after the
    file, which must define a class of that name (a ScriptedLoadableModule)."""
    import ast

    for path in (ROOT / module).glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body
                   if isinstance(n, ast.ClassDef)}
        assert path.stem in classes, f"{path.name}: Slicer would load it as a module"
        assert "ScriptedLoadableModule" in classes[path.stem], path.name


def test_headless_train_script_runs_from_source_and_install_layouts(tmp_path):
    """`train.py --help` finds the engine by itself in the source tree (../../MotionSSIM) and in
    the installed layout (<qt-scripted-modules>/{MotionSSIMLib, MotionSSIMTrainingScripts})."""
    import os
    import shutil
    import subprocess
    import sys

    source = ROOT / "MotionSSIMTraining" / "MotionSSIMTrainingScripts" / "train.py"
    installed = tmp_path / "qt-scripted-modules"
    shutil.copytree(ROOT / "MotionSSIM" / "MotionSSIMLib", installed / "MotionSSIMLib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (installed / "MotionSSIMTrainingScripts").mkdir()
    shutil.copy(source, installed / "MotionSSIMTrainingScripts" / "train.py")
    import site

    # the third-party packages, but no .pth file (-S): an engine installed from another
    # checkout (`pip install -e`) must not stand in for the one the script has to find itself
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    for script in (source, installed / "MotionSSIMTrainingScripts" / "train.py"):
        out = subprocess.run([sys.executable, "-S", str(script), "--", "--help"],
                             capture_output=True, text=True, encoding="utf-8", errors="replace",
                             env=env, cwd=tmp_path, timeout=120)
        assert out.returncode == 0 and "--resume" in out.stdout, (script, out.stderr)


def test_extension_metadata():
    text = cmake_text(ROOT / "CMakeLists.txt")
    project = re.search(r"project\(\s*(\w+)", text).group(1)
    assert project == "MotionSSIM"
    assert not project.startswith("Slicer")
    sets = cmake_sets(ROOT / "CMakeLists.txt")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS",
                "EXTENSION_CATEGORY"):
        assert sets.get(key) and sets[key][0], key
    assert sets["EXTENSION_HOMEPAGE"][0].startswith("https://")
    assert sets["EXTENSION_ICONURL"][0].endswith("/MotionSSIM.png")
    assert "PyTorch" in sets["EXTENSION_DEPENDS"]
    for module in MODULE_DIRS:
        assert f"add_subdirectory({module})" in text
    assert "find_package(Slicer REQUIRED)" in text
    assert "${Slicer_EXTENSION_GENERATE_CONFIG}" in text and "${Slicer_EXTENSION_CPACK}" in text

    index = json.loads((ROOT / f"{project}.json").read_text())
    assert INDEX_REQUIRED <= set(index) <= INDEX_KEYS
    assert "slicer-extension-catalog-entry-schema-v1.0.1" in index["$schema"]
    assert index["category"] == sets["EXTENSION_CATEGORY"][0] == "Quantification"
    assert index["build_dependencies"] == ["PyTorch"]
    assert index["scm_url"].startswith("https://github.com/")
    assert index["tier"] in (1, 3, 5)


@pytest.mark.parametrize(
    "path",
    [
        "MotionSSIM.png",
        "MotionSSIM/Resources/Icons/MotionSSIM.png",
        "MotionSSIMTraining/Resources/Icons/MotionSSIMTraining.png",
    ],
)
def test_icons_are_128_px_png(path):
    with Image.open(ROOT / path) as image:
        assert image.format == "PNG"
        assert image.size == (128, 128)
        assert image.mode in ("RGB", "RGBA")
        pixels = image.convert("RGB").getcolors(128 * 128)
        assert pixels is None or len(pixels) > 8, "not a blank image"


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
    for section in ("1. Definitions.", "2. Grant of Copyright License.", "3. Grant of Patent License.",
                    "4. Redistribution.", "9. Accepting Warranty or Additional Liability.",
                    "END OF TERMS AND CONDITIONS"):
        assert section in text, section
    assert re.search(r"license\s*=\s*\{\s*text\s*=\s*\"Apache-2.0\"", (ROOT / "pyproject.toml").read_text())


# Provided inside Slicer without pip: Slicer's own Python packages and modules, the PyTorch
# extension (torch/torchvision through PyTorchUtils), and this extension's own code.
SLICER_PROVIDED = {"slicer", "qt", "ctk", "vtk", "PythonQt", "SampleData", "PyTorchUtils",
                   "numpy", "scipy", "SimpleITK", "torch", "torchvision",
                   "MotionSSIM", "MotionSSIMLib", "MotionSSIMTraining"}


def third_party_imports() -> dict[str, set[str]]:
    """Import roots (not stdlib, not provided by Slicer) -> files, over every file that runs in
    Slicer, lazy imports inside functions included."""
    import ast
    import sys

    found: dict[str, set[str]] = {}
    for module in MODULE_DIRS:
        for path in (ROOT / module).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    roots = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    roots = [node.module.split(".")[0]]
                else:
                    continue
                for root in roots:
                    if root in sys.stdlib_module_names or root in SLICER_PROVIDED:
                        continue
                    found.setdefault(root, set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_slicer_requirements_cover_every_import_of_the_engine():
    """One requirements file (MotionSSIM/Resources/requirements.txt) installs everything the
    code that runs in Slicer imports, and lists nothing it does not import."""
    from MotionSSIMLib.bridge import dependencies

    required = {dependencies.normalize(r.name)
                for r in dependencies.read_requirements(
                    ROOT / "MotionSSIM" / "Resources" / "requirements.txt")}
    imports = third_party_imports()
    needed = {dependencies.normalize(dependencies.IMPORT_TO_DISTRIBUTION.get(m, m)): files
              for m, files in imports.items()}
    missing = {name: sorted(files) for name, files in needed.items() if name not in required}
    assert not missing, f"imported in Slicer but not in requirements.txt: {missing}"
    unused = required - set(needed)
    assert not unused, f"requirements.txt lists packages nothing imports: {sorted(unused)}"
    assert {"matplotlib", "nibabel", "torchio", "safetensors", "scikit-image"} <= required
    # Slicer's own packages and torch are never pip-installed by us
    assert not required & (dependencies.SLICER_BUNDLED | {"torch", "torchvision"})


def test_extensions_index_entry_is_complete():
    """The screenshot and icon the metadata name exist in the repository; the description is
    one or two sentences and names the oldest supported Slicer; README states the package size."""
    sets = cmake_sets(ROOT / "CMakeLists.txt")
    prefix = "https://raw.githubusercontent.com/motionssim/SlicerMotionSSIM/main/"
    urls = sets["EXTENSION_SCREENSHOTURLS"] + sets["EXTENSION_ICONURL"]
    for url in urls:
        assert url.startswith(prefix), url
        path = ROOT / url[len(prefix):]
        with Image.open(path) as image:
            assert image.format == "PNG", url
            if "Screenshots/" in url:
                assert image.size[0] >= 600 and image.size[1] >= 300, image.size
    # (cmake_sets stops at the first ")", which the description may hold)
    description = re.search(r'set\(EXTENSION_DESCRIPTION "([^"]*)"\)',
                            cmake_text(ROOT / "CMakeLists.txt")).group(1)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", description) if s]
    assert 1 <= len(sentences) <= 2, sentences
    assert "Slicer 5.8" in description
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"Slicer 5\.8.*Python 3\.9", readme) and "Python 3.12" in readme
    assert re.search(r"package is about \d+ MB", readme) and "offline" in readme


def test_bundled_sample_ships_with_the_module():
    resources = cmake_sets(ROOT / "MotionSSIM" / "CMakeLists.txt")["MODULE_PYTHON_RESOURCES"]
    sample = "Resources/Samples/sample_t2_motion.nii.gz"
    assert sample in resources and (ROOT / "MotionSSIM" / sample).is_file()
    module = (ROOT / "MotionSSIM" / "MotionSSIM.py").read_text(encoding="utf-8")
    assert 'SAMPLE_FILE = "sample_t2_motion.nii.gz"' in module


def test_package_size_stated_in_readme_matches_the_files():
    """The number README gives is the size of what CMake installs (within 2 MB)."""
    total = 0
    for module in MODULE_DIRS:
        for name in listed_files(module):
            total += (ROOT / module / name).stat().st_size
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = int(re.search(r"package is about (\d+) MB", readme).group(1))
    assert abs(total / 1e6 - stated) <= 2, (total / 1e6, stated)


def test_repository_is_named_for_the_extensions_index():
    """The index's check_git_repository_name wants the git repository's name to start with
    "Slicer" (the extension's name must not): SlicerMotionSSIM everywhere a URL names it."""
    sets = cmake_sets(ROOT / "CMakeLists.txt")
    index = json.loads((ROOT / "MotionSSIM.json").read_text())
    repo = index["scm_url"].rstrip("/").removesuffix(".git").rsplit("/", 1)[1]
    assert repo == "SlicerMotionSSIM" and repo.startswith("Slicer")
    assert sets["EXTENSION_HOMEPAGE"][0].endswith("/SlicerMotionSSIM")
    for url in sets["EXTENSION_ICONURL"] + sets["EXTENSION_SCREENSHOTURLS"]:
        assert "/SlicerMotionSSIM/" in url, url
    text = "\n".join((ROOT / p).read_text(encoding="utf-8") for p in (
        "README.md", "MotionSSIM/MotionSSIM.py", "MotionSSIMTraining/MotionSSIMTraining.py"))
    assert "motionssim/MotionSSIM" not in text  # no URL of the old repository name
    assert "github.com/motionssim/SlicerMotionSSIM" in text


def test_contributors_read_name_and_affiliation():
    sets = cmake_sets(ROOT / "CMakeLists.txt")
    cmake = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]*)"\)',
                      cmake_text(ROOT / "CMakeLists.txt")).group(1)
    assert sets["EXTENSION_CONTRIBUTORS"]
    names = [n.strip() for n in cmake.split(",")]
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", n) for n in names), names
    for module in ("MotionSSIM/MotionSSIM.py", "MotionSSIMTraining/MotionSSIMTraining.py"):
        assert repr(names)[1:-1].replace("'", '"') in (ROOT / module).read_text(), module


def test_sample_checksum_is_the_files():
    """SampleData re-copies a cached sample whose checksum differs (an older version)."""
    import hashlib

    module = (ROOT / "MotionSSIM" / "MotionSSIM.py").read_text(encoding="utf-8")
    stated = re.search(r'SAMPLE_SHA256 = "SHA256:([0-9a-f]{64})"', module).group(1)
    sample = ROOT / "MotionSSIM" / "Resources" / "Samples" / "sample_t2_motion.nii.gz"
    assert hashlib.sha256(sample.read_bytes()).hexdigest() == stated
    assert "checksums=SAMPLE_SHA256" in module

"""What the Slicer modules check before installing anything (MotionSSIMLib.bridge.dependencies)."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from MotionSSIMLib.base.errors import InputError
from MotionSSIMLib.bridge import dependencies as dep


@pytest.mark.parametrize(
    "text, expected",
    [("2.5.1+cu121", (2, 5, 1)), ("2.6.0rc1", (2, 6, 0)), ("0.16", (0, 16)), ("1!2", (1,)),
     ("2.14.1", (2, 14, 1))],
)
def test_version_tuple(text, expected):
    assert dep.version_tuple(text) == expected


@pytest.mark.parametrize(
    "line, version, ok",
    [("torch>=2.1", "2.14.1", True), ("torch>=2.1", "2.0.1+cu118", False),
     ("torch>=2.1", "2.1.0+cpu", True), ("torchvision>=0.16", "0.15.2", False),
     ("x>=1.2,<2", "1.9", True), ("x>=1.2,<2", "2.0", False), ("x==1.4.*", "1.4.7", True),
     ("x==1.4.*", "1.5.0", False), ("x~=1.4.2", "1.4.9", True), ("x~=1.4.2", "1.5.0", False),
     ("x!=1.0", "1.0.0", False), ("x", "0.0.1", True)],
)
def test_requirement_allows(line, version, ok):
    assert dep.parse_requirement(line).allows(version) is ok


def test_bad_requirement_lines_are_refused_in_one_line(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("numpy>=1\nfoo>=one\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        dep.read_requirements(path)
    assert str(err.value).startswith(f"{path}: line 2:") and "\n" not in str(err.value)
    for line in ("pkg @ https://x/y.whl", "pkg>=1; python_version<'3.10'"):
        with pytest.raises(InputError, match="not a plain requirement"):
            dep.parse_requirement(line)
    with pytest.raises(InputError, match="cannot read"):
        dep.read_requirements(tmp_path / "missing.txt")


def test_the_shipped_requirements_parse():
    reqs = dep.read_requirements()
    assert dep.requirements_path().name == "requirements.txt"
    assert {"torchio", "safetensors", "matplotlib", "nibabel"} <= {r.name for r in reqs}


def test_report_tells_installed_missing_and_wrong_versions():
    numpy_version = importlib.metadata.version("numpy")
    reqs = [dep.parse_requirement("numpy>=1.0"), dep.parse_requirement("numpy>=999"),
            dep.parse_requirement("motionssim-no-such-package>=1.0")]
    report = dep.check(reqs, include_torch=False)
    assert [p.status for p in report.packages] == ["ok", "wrong version", "missing"]
    assert not report.ok and report.missing_names() == ["numpy", "motionssim-no-such-package"]
    lines = report.text().splitlines()
    assert lines == [f"numpy {numpy_version}", f"numpy {numpy_version}: needs >=999",
                     "motionssim-no-such-package: missing (needs >=1.0)"]
    assert report.pip_problems() == report.problems() and report.torch_problems() == []


def test_torch_and_torchvision_versions_are_checked():
    report = dep.check([], include_torch=True)
    names = [p.requirement.name for p in report.packages]
    assert names == ["torch", "torchvision"]
    torch = importlib.metadata.version("torch")
    assert report.packages[0].installed == torch and report.packages[0].status == "ok"
    old = dep.check([dep.parse_requirement("torch>=999")], include_torch=False)
    assert old.problems()[0].text() == f"torch {torch}: needs >=999"


def test_torch_build_info_does_not_import_torch():
    code = ("import sys; from MotionSSIMLib.bridge import dependencies as d; "
            "print(d.torch_build_info()); print('torch' in sys.modules)")
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "MotionSSIM")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    info, imported = out.stdout.strip().splitlines()
    assert imported == "False", "torch was imported"
    assert info.startswith(f"torch {importlib.metadata.version('torch')} (")
    assert "build" in info


# --------------------------------------------------------------------------- installing in Slicer


def test_constraints_pin_slicers_packages_and_torch_as_installed(tmp_path):
    from MotionSSIMLib.bridge import dependencies as d

    lines = d.constraints()
    pinned = {line.split("==")[0]: line.split("==")[1] for line in lines}
    for name in ("numpy", "scipy", "SimpleITK", "vtk", "torch", "torchvision"):
        if d.installed_version(name) is not None:
            assert pinned[name] == d.installed_version(name)
    path = d.write_constraints(tmp_path / "constraints.txt")
    body = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert body == lines
    args = d.pip_arguments(["torchio>=0.20"], path)
    assert args == ["-c", str(path), "torchio>=0.20"]
    assert d.pip_arguments(["tqdm"], path, force=True)[:2] == ["--force-reinstall", "--no-deps"]
    # nothing MotionSSIM installs is pinned: the constraints only hold what it must not change
    assert not {d.normalize(r.name) for r in d.read_requirements()} & {
        d.normalize(n) for n in pinned}


def test_requirements_resolve_under_the_constraints_without_changing_anything(tmp_path):
    """pip itself (offline, --dry-run) reads the constraints file with the requirements and
    finds every package satisfied by what is installed: the file is valid and consistent."""
    import subprocess
    import sys

    from MotionSSIMLib.bridge import dependencies as d

    constraints = d.write_constraints(tmp_path / "constraints.txt")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                          *d.pip_arguments(["-r", str(d.requirements_path())], constraints)],
                         capture_output=True, text=True, timeout=300)
    if "No module named pip" in out.stderr:
        pytest.skip("pip is not installed in this environment")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Would install" not in out.stdout, out.stdout[-2000:]
    # and a constraint that contradicts what is installed is enforced (pip refuses)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("numpy==0.0.1\n")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                          "-c", str(wrong), "numpy"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0


def test_offline_failure_is_one_line_saying_what_and_how():
    from MotionSSIMLib.bridge import dependencies as d

    line = d.offline_message(["torchio>=0.20", "tqdm>=4.60"])
    assert "\n" not in line and "torchio>=0.20 tqdm>=4.60" in line
    assert "pip download" in line and "--no-index --find-links" in line


def test_package_info_lists_requirements_and_slicers_own():
    from MotionSSIMLib.bridge import dependencies as d

    text = d.package_info()
    assert text.splitlines()[0].startswith("torch")
    assert "Slicer's own (never changed by MotionSSIM):" in text
    assert f"numpy {d.installed_version('numpy')}" in text

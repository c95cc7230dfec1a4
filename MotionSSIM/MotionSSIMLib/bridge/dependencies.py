"""What MotionSSIM needs inside 3D Slicer, what is installed, and what is missing or too old.

Standard library only, and nothing here imports torch: the panel uses it when it opens (to show
what is installed) and before any work (to ask for what is missing). Installing is the Slicer
module's job; this module only reports.

The requirements are ``Resources/requirements.txt`` (the packages pip installs) plus torch and
torchvision, which come from the PyTorch extension (PyTorchUtils picks the CUDA build).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..base.errors import InputError

# torch/torchvision are installed by the PyTorch extension; the engine is tested with these
TORCH_REQUIREMENT = "torch>=2.1"
TORCHVISION_REQUIREMENT = "torchvision>=0.16"

# Slicer's own packages: used, never installed or replaced by MotionSSIM
SLICER_BUNDLED = frozenset({"numpy", "scipy", "simpleitk", "vtk"})

# import name -> distribution name where they differ
IMPORT_TO_DISTRIBUTION = {"skimage": "scikit-image", "sklearn": "scikit-learn",
                          "PIL": "pillow", "SimpleITK": "simpleitk"}

_OPS = ("~=", "==", "!=", "<=", ">=", "<", ">")
_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


def requirements_path() -> Path:
    """MotionSSIM/Resources/requirements.txt (next to the engine package, installed or not)."""
    from ..base.resources import REQUIREMENTS

    return REQUIREMENTS


def normalize(name: str) -> str:
    """PEP 503 name: case-insensitive, runs of -_. equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def version_tuple(text: str) -> tuple[int, ...]:
    """The release numbers of a version ('2.5.1+cu121' -> (2, 5, 1); '2.6.0rc1' -> (2, 6, 0))."""
    release = text.split("+", 1)[0]
    numbers = []
    for part in release.split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() < len(part):  # a pre/post-release tag ends the release numbers
            break
    return tuple(numbers)


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (a > b) - (a < b)


@dataclass(frozen=True)
class Requirement:
    """One requirement line: a distribution name and version conditions (op, version)."""

    name: str
    specifiers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return self.name + ",".join(op + v for op, v in self.specifiers)

    def allows(self, version: str) -> bool:
        have = version_tuple(version)
        for op, text in self.specifiers:
            want = version_tuple(text.rstrip(".*"))
            c = _cmp(have, want)
            if op == "==" and text.endswith(".*"):
                ok = have[: len(want)] == want
            elif op == "~=":  # >= want and the same release series
                ok = c >= 0 and have[: len(want) - 1] == want[:-1]
            else:
                ok = {"==": c == 0, "!=": c != 0, "<=": c <= 0, ">=": c >= 0, "<": c < 0,
                      ">": c > 0}[op]
            if not ok:
                return False
        return True


def parse_requirement(line: str, where: str = "requirement") -> Requirement:
    """'name[extras] >=1.2, <2' -> Requirement (markers, URLs and options are refused)."""
    m = _LINE.match(line)
    if m is None or ";" in line or "@" in line:
        raise InputError(f"{where}: not a plain requirement: {line.strip()!r}")
    specs = []
    rest = m.group(3)
    for part in filter(None, (p.strip() for p in rest.split(","))):
        op = next((o for o in _OPS if part.startswith(o)), None)
        version = part[len(op):].strip() if op else ""
        if op is None or not re.match(r"^\d+(\.\d+)*(\.\*)?([A-Za-z0-9.+-]*)$", version):
            raise InputError(f"{where}: bad version condition {part!r} in {line.strip()!r}")
        specs.append((op, version))
    return Requirement(m.group(1), tuple(specs))


def read_requirements(path: str | os.PathLike | None = None) -> list[Requirement]:
    """The requirements in a requirements.txt (comments and blank lines skipped)."""
    path = Path(path) if path is not None else requirements_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(parse_requirement(line, f"{path}: line {number}"))
    return out


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, or None (cheap: reads metadata, imports nothing)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class PackageStatus:
    requirement: Requirement
    installed: str | None

    @property
    def status(self) -> str:
        """'ok', 'missing' or 'wrong version'."""
        if self.installed is None:
            return "missing"
        return "ok" if self.requirement.allows(self.installed) else "wrong version"

    def text(self) -> str:
        name, want = self.requirement.name, str(self.requirement)[len(self.requirement.name):]
        if self.status == "missing":
            return f"{name}: missing (needs {want or 'any version'})"
        if self.status == "wrong version":
            return f"{name} {self.installed}: needs {want}"
        return f"{name} {self.installed}"


@dataclass(frozen=True)
class DependencyReport:
    packages: tuple[PackageStatus, ...]

    @property
    def ok(self) -> bool:
        return all(p.status == "ok" for p in self.packages)

    def problems(self) -> list[PackageStatus]:
        return [p for p in self.packages if p.status != "ok"]

    def missing_names(self) -> list[str]:
        return [p.requirement.name for p in self.problems()]

    def torch_problems(self) -> list[PackageStatus]:
        """Problems with torch or torchvision (installed through the PyTorch extension)."""
        return [p for p in self.problems() if normalize(p.requirement.name) in ("torch", "torchvision")]

    def pip_problems(self) -> list[PackageStatus]:
        """Problems with the packages pip installs (requirements.txt)."""
        torch = set(map(id, self.torch_problems()))
        return [p for p in self.problems() if id(p) not in torch]

    def text(self) -> str:
        """One line per package: what is installed, what is missing or too old."""
        return "\n".join(p.text() for p in self.packages)


def check(requirements: list[Requirement] | None = None, include_torch: bool = True) -> DependencyReport:
    """Compare the requirements (default: requirements.txt) with what is installed."""
    reqs = list(requirements) if requirements is not None else read_requirements()
    if include_torch:
        reqs = [parse_requirement(TORCH_REQUIREMENT), parse_requirement(TORCHVISION_REQUIREMENT),
                *reqs]
    return DependencyReport(tuple(PackageStatus(r, installed_version(r.name)) for r in reqs))


def torch_build_info() -> str:
    """'torch 2.5.1 (CUDA 12.4 build)' without importing torch (reads torch/version.py as text);
    the GPU itself is only known once torch is imported (after the first Apply)."""
    version = installed_version("torch")
    if version is None:
        return "PyTorch not installed: it is offered on the first Apply."
    cuda = None
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.origin:
        try:
            text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
            m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, flags=re.M)
            cuda = m.group(1) if m else None
        except OSError:
            pass
    build = f"CUDA {cuda} build" if cuda else "CPU build (or Apple MPS)"
    return f"torch {version} ({build})"


# What pip must leave as it is when it installs MotionSSIM's packages inside Slicer: Slicer's
# own packages (other modules rely on exactly these builds) and the torch build the PyTorch
# extension chose for the GPU driver. torchio, for one, requires numpy, scipy, SimpleITK and
# torch: without constraints pip may upgrade them (as TotalSegmentator guards SimpleITK).
PINNED = ("numpy", "scipy", "SimpleITK", "vtk", "torch", "torchvision")


def constraints(names: tuple[str, ...] = PINNED) -> list[str]:
    """pip constraint lines 'name==version' for the installed ones of `names`. A local build
    tag (torch's '+cu121') is kept: pip matches it exactly against the installed build."""
    lines = []
    for name in names:
        version = installed_version(name)
        if version is not None:
            lines.append(f"{name}=={version}")
    return lines


def write_constraints(path: str | os.PathLike, names: tuple[str, ...] = PINNED) -> Path:
    """The constraints file for `pip install -c PATH` (see constraints)."""
    path = Path(path)
    path.write_text("# what MotionSSIM's installation must not change (Slicer's own packages, "
                    "the PyTorch extension's torch)\n" + "".join(f"{line}\n" for line in
                                                                  constraints(names)),
                    encoding="utf-8")
    return path


def pip_arguments(requirements: list[str], constraints_path: str | os.PathLike,
                  force: bool = False) -> list[str]:
    """`pip install` arguments (slicer.util.pip_install takes them as a list): the
    requirements under the constraints; `force` reinstalls them (without their dependencies,
    which are Slicer's or the PyTorch extension's)."""
    extra = ["--force-reinstall", "--no-deps"] if force else []
    return [*extra, "-c", os.fspath(constraints_path), *requirements]


def offline_message(requirements: list[str]) -> str:
    """One line for a pip installation that failed (no network, most often): what is missing
    and how to install it from wheels on disk."""
    names = " ".join(requirements)
    return (f"Could not install {names} with pip (no internet connection?). On a computer "
            f"with internet: 'pip download {names} -d wheels', copy the folder 'wheels' here, "
            "then in Slicer's Python console: slicer.util.pip_install('--no-index "
            f"--find-links /path/to/wheels {names}'), and restart Slicer.")


def package_info(requirements: list[Requirement] | None = None) -> str:
    """What MotionSSIM uses, one package a line: its requirements with the installed versions
    (check().text()), then Slicer's own packages, never changed by MotionSSIM."""
    lines = [check(requirements).text(), "Slicer's own (never changed by MotionSSIM):"]
    for name in sorted(SLICER_BUNDLED):
        distribution = "SimpleITK" if name == "simpleitk" else name
        lines.append(f"  {distribution} {installed_version(distribution) or 'not installed'}")
    return "\n".join(lines)

"""What an archive run assesses: the scans found in folders and BIDS datasets, each with a key.

- A folder holding DICOM files is one input (a series). A folder with
  `dataset_description.json` is a BIDS root: every NIfTI under it is a scan (anat, dwi, func,
  fmap, ...; `derivatives/`, `sourcedata/`, `code/`, `stimuli/` and hidden folders are not raw
  scans and are skipped). Any other folder is walked for volumes (NIfTI, NRRD, MetaImage) and
  DICOM series folders. A file given by itself is a scan too.
- Each scan has a *key*: its path under the report folder without the report suffixes. Under
  a BIDS root it mirrors the dataset (`sub-01/ses-1/anat/sub-01_ses-1_T1w`), so the reports
  carry the BIDS entities; a loose file keeps the flat `report.report_name`. With several
  folders, each folder's keys start with its name.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Scan", "bids_entities", "discover", "distinct_inputs", "is_bids_root"]

BIDS_DESCRIPTION = "dataset_description.json"
# folders of a BIDS dataset that hold no raw scans (processed images, sources, scripts)
BIDS_SKIP = frozenset({"derivatives", "sourcedata", "code", "stimuli", "phenotype"})
BIDS_DATATYPES = frozenset({"anat", "dwi", "func", "fmap", "perf", "pet", "micr", "nirs",
                            "meg", "eeg", "ieeg", "beh", "motion", "mrs"})
NIFTI_SUFFIXES = (".nii.gz", ".nii")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_ENTITY = re.compile(r"^([A-Za-z0-9]+)-([A-Za-z0-9.+]+)$")


@dataclass(frozen=True)
class Scan:
    """One input of an archive run: `path` is read, its reports go to OUT/`key`_*."""

    path: Path
    key: str  # posix path under the report folder, without the report suffixes
    rel: str  # shown in the reports: the path under its folder, or the input as given
    root: str = ""  # the folder it was found in ("" for a file given by itself)
    bids: bool = False
    entities: tuple[tuple[str, str], ...] = ()
    error: str = ""  # found but unusable before reading (an unreadable folder)

    def entity(self, name: str) -> str:
        return dict(self.entities).get(name, "")

    def report_dir(self, out: str | Path) -> Path:
        return Path(out).joinpath(*self.key.split("/")[:-1])

    @property
    def stem(self) -> str:
        return self.key.rsplit("/", 1)[-1]


# ---------------------------------------------------------------------------------------------
# Discovery


def strip_suffix(name: str, suffixes: Sequence[str] = VOLUME_SUFFIXES + DICOM_SUFFIXES) -> str:
    low = name.lower()
    for s in suffixes:
        if low.endswith(s) and len(name) > len(s):
            return name[: -len(s)]
    return name


def is_bids_root(folder: str | Path) -> bool:
    return (Path(folder) / BIDS_DESCRIPTION).is_file()


def _looks_dicom(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return True
    if "." in name:  # volumes, notes, sidecars: not read to find out
        return False
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block the open
            return False
        with open(path, "rb") as f:
            pre = f.read(132)
    except OSError:
        return False
    return len(pre) == 132 and pre[128:132] == b"DICM"


def is_series_folder(folder: str | Path) -> bool:
    """A folder that holds DICOM files itself: one input (a series), not an archive."""
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                if _looks_dicom(Path(entry.path)):
                    return True
    except OSError:
        return False
    return False


def bids_entities(rel: str) -> dict[str, str]:
    """subject, session, datatype, run, acq, task and suffix of a path under a BIDS root
    (`sub-01/ses-2/func/sub-01_ses-2_task-rest_run-1_bold.nii.gz`); the folders give the
    subject and session when the file name lacks them. Missing ones are ''."""
    parts = rel.split("/")
    chunks = strip_suffix(parts[-1], NIFTI_SUFFIXES).split("_")
    found: dict[str, str] = {}
    for c in chunks:
        m = _ENTITY.match(c)
        if m and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    for p in parts[:-1]:
        m = _ENTITY.match(p)
        if m and m.group(1) in ("sub", "ses") and m.group(1) not in found:
            found[m.group(1)] = m.group(2)
    suffix = chunks[-1] if len(chunks) > 1 and not _ENTITY.match(chunks[-1]) else ""
    datatype = parts[-2] if len(parts) >= 2 and parts[-2] in BIDS_DATATYPES else ""
    return {"subject": found.get("sub", ""), "session": found.get("ses", ""),
            "datatype": datatype, "run": found.get("run", ""), "acq": found.get("acq", ""),
            "task": found.get("task", ""), "suffix": suffix}


def _walk(root: Path, bids: bool) -> Iterator[tuple[str, bool, str]]:
    """(relative posix path, is a DICOM folder, error) of the scans under `root`, sorted.
    Folder symlinks are followed (a subject folder linked in from elsewhere is part of the
    dataset); a folder reached twice (a link loop, two links to one folder) is walked once."""
    errors: list[OSError] = []
    walked: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, onerror=errors.append, followlinks=True):
        here = Path(folder)
        try:
            st = here.stat()
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident = None
        if ident is not None and ident in walked:
            dirs[:] = []
            continue
        if ident is not None:
            walked.add(ident)
        rel_dir = here.relative_to(root).as_posix()
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (bids and d in BIDS_SKIP))
        files = sorted(f for f in files if not f.startswith("."))
        if not bids and rel_dir != "." and any(_looks_dicom(here / f) for f in files):
            yield rel_dir, True, ""
        for f in files:
            low = f.lower()
            if low.endswith(NIFTI_SUFFIXES if bids else VOLUME_SUFFIXES):
                yield (f if rel_dir == "." else f"{rel_dir}/{f}"), False, ""
    for exc in errors:  # a folder that could not be listed: reported, not silently skipped
        where = Path(exc.filename) if exc.filename else root
        try:
            rel = where.relative_to(root).as_posix()
        except ValueError:
            rel = where.name
        yield rel, True, f"cannot list the folder ({exc.strerror or exc})"


def _report_key(key: str) -> str:
    """`key` with its last component as the report files will be named (report.safe_stem)."""
    from ..assessment.report import safe_stem

    head, _, stem = key.rpartition("/")
    return f"{head}/{safe_stem(stem)}" if head else safe_stem(stem)


def discover(inputs: Sequence[str | os.PathLike]) -> list[Scan]:
    """The scans of the inputs (module docstring): folders walked, files as they are. A scan
    found twice (the same file through two inputs) is kept once; two scans whose keys
    collide get the 8-hex SHA-256 of their resolved path appended."""
    from ..assessment.report import report_name

    folders = [Path(p) for p in inputs if Path(p).is_dir() and not is_series_folder(p)]
    prefix = len({str(f.resolve()) for f in folders}) > 1
    scans: list[Scan] = []
    for raw in inputs:
        p = Path(raw)
        if p in folders:
            bids = is_bids_root(p)
            name = p.resolve().name or "root"
            before = len(scans)
            for rel, is_dir, error in _walk(p, bids):
                base = rel if is_dir else strip_suffix(rel)
                if is_dir and rel in ("", "."):
                    base = name
                key = _report_key(f"{name}/{base}" if prefix else base)
                ent = tuple(bids_entities(rel).items()) if bids else ()
                scans.append(Scan(p / rel, key, rel, str(p), bids, ent, error))
            if len(scans) == before:  # listed as a failure: an empty folder is no success
                what = ("no NIfTI file in this BIDS dataset" if bids else
                        "no scan in this folder (NIfTI, NRRD, MetaImage files or folders of "
                        "DICOM files, in it or below)")
                scans.append(Scan(p, _report_key(name), str(raw), str(p), bids, (), what))
        else:
            scans.append(Scan(p, report_name(p), str(raw)))
    return _unique(scans)


def _resolved(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return os.path.abspath(path)


def distinct_inputs(inputs: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The inputs with each file or folder once, by resolved path (the first spelling kept),
    and the (dropped, kept) pairs: `a.nii` named twice, or once through a symlink, is one scan."""
    kept: dict[str, str] = {}
    dropped = []
    for raw in inputs:
        ident = _resolved(Path(raw))
        if ident in kept:
            dropped.append((raw, kept[ident]))
        else:
            kept[ident] = raw
    return list(kept.values()), dropped


def _unique(scans: list[Scan]) -> list[Scan]:
    """Each input once (by its resolved path: a file named twice, or given by name and found
    in a folder, is one scan, the first found), then keys made distinct: two scans whose keys
    would name the same report files (equal once case is ignored, since macOS and Windows
    file systems ignore it) each get the 8-hex SHA-256 of their resolved path appended."""
    seen: set[str] = set()
    kept = []
    for s in scans:
        ident = _resolved(s.path)
        if ident not in seen:
            seen.add(ident)
            kept.append(s)
    by_key: dict[str, int] = {}
    for s in kept:
        by_key[s.key.casefold()] = by_key.get(s.key.casefold(), 0) + 1
    out = []
    for s in kept:
        if by_key[s.key.casefold()] > 1:
            digest = hashlib.sha256(os.fsencode(_resolved(s.path))).hexdigest()[:8]
            s = Scan(s.path, f"{s.key}_{digest}", s.rel, s.root, s.bids, s.entities, s.error)
        out.append(s)
    return out

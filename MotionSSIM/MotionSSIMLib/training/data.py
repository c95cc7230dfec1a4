"""Training data: lists of 3D volumes, a byte-bounded volume cache, and clean training slices.

A *data source* is one of
- a split JSON file ``{"train": [...], "validation": [...], "test": [...]}`` (paths relative
  to the JSON file; the format `synthesis.writing.write_dataset` writes),
- a split CSV file with a header and the columns ``path`` and ``split`` (train / validation /
  test; paths relative to the CSV file),
- a folder holding ``split.json``, or sub-folders ``train/``, ``validation/`` (or ``val/``) and
  ``test/``, or else volumes directly (then all of them belong to every split asked for).
A volume is any file `io.read_volume` reads (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd, .npy) or
a folder of DICOM files.

Each clean sample is drawn from its own random stream, seeded from (seed, stream, epoch, index)
with numpy's SeedSequence: a random volume, a random orientation (the acquisition plane for an
anisotropic volume, else one of the three uniformly), a random non-empty slice from the central
half of that axis, fitted to the model input (`geometry.to_model_input`: cut to the square
window around the head that the slice's own foreground gives, then the pad-or-downscale fit, the
same rule inference applies to the slice it is given). The motion simulators corrupt this fitted
clean slice, so the label is computed in the clean slice's window. So sample i of epoch e
is the same whatever the number of workers, the batch size or the cache state.
"""

from __future__ import annotations

import csv
import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..base.errors import InputError, MotionSSIMError
from ..base.settings import SLICE_RANGES

__all__ = [
    "SLICE_RANGES",
    "SPLITS",
    "STREAMS",
    "VOLUME_SUFFIXES",
    "SliceDataset",
    "VolumeCache",
    "check_volumes",
    "list_volumes",
    "resolve_split",
    "slice_candidates",
    "sample_rng",
]

SPLITS = ("train", "validation", "test")
# Random stream per use, so validation/test samples never share draws with training samples.
STREAMS = {"train": 0, "validation": 1, "test": 2, "calibration": 3, "uncertainty": 4}
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")
_DICOM_SUFFIXES = (".dcm", ".ima")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation",
                  "val": "validation", "valid": "validation", "test": "test", "testing": "test"}
ANISOTROPY_RATIO = 1.5      # DESIGN.md: largest/smallest spacing above this = anisotropic
MIN_FOREGROUND = 0.05       # a slice with less foreground than this counts as empty


def _is_volume_file(p: Path) -> bool:
    name = p.name.lower()
    return p.is_file() and any(name.endswith(s) for s in VOLUME_SUFFIXES)


def _is_dicom_dir(p: Path) -> bool:
    return p.is_dir() and any(
        f.is_file() and f.suffix.lower() in _DICOM_SUFFIXES for f in p.iterdir()
    )


def list_volumes(folder: str | Path) -> list[Path]:
    """All volumes under `folder` (recursive, sorted): volume files and DICOM folders (a folder
    with .dcm/.ima files counts as one volume). A .mhd/.nhdr header's raw data file is not
    listed separately (it has another suffix)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    found: list[Path] = []

    def walk(d: Path) -> None:
        if _is_dicom_dir(d):
            found.append(d)
            return
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir():
                walk(p)
            elif _is_volume_file(p):
                found.append(p)

    walk(root)
    return sorted(found)


def _read_split_json(path: Path) -> dict[str, list[Path]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:  # deeply nested JSON: refused in one line, not a traceback
        raise InputError(f"{path}: not a split JSON file (nested too deeply)") from None
    except (OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable split JSON file ({detail})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected an object {{\"train\": [...], ...}}")
    out: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for key, items in raw.items():
        split = _SPLIT_ALIASES.get(str(key).lower())
        if split is None:
            continue  # other keys (e.g. settings) are allowed and ignored
        if not isinstance(items, list) or not all(isinstance(i, str) and i and "\0" not in i
                                                  for i in items):
            raise InputError(f"{path}: \"{str(key)[:40]}\" must be a list of paths")
        out[split] += [(path.parent / i) for i in items]
    return out


def _read_split_csv(path: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {s: [] for s in SPLITS}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in cols or "split" not in cols:
                raise InputError(f"{path}: a split CSV needs the header columns path,split")
            for n, row in enumerate(reader, start=2):
                row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
                split = _SPLIT_ALIASES.get(row["split"].lower())
                if split is None:
                    raise InputError(f"{path}: line {n}: unknown split {row['split'][:40]!r} "
                                     "(use train, validation or test)")
                if not row.get("path") or "\0" in row["path"]:
                    raise InputError(f"{path}: line {n}: no path")
                out[split].append(path.parent / row["path"])
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable split CSV file ({detail})") from None
    return out


def _read_split_folder(root: Path) -> dict[str, list[Path]] | None:
    if (root / "split.json").is_file():
        return _read_split_json(root / "split.json")
    subdirs = {}
    for p in root.iterdir():
        split = _SPLIT_ALIASES.get(p.name.lower())
        if p.is_dir() and split is not None:
            subdirs.setdefault(split, []).append(p)
    if not subdirs:
        return None
    return {s: sorted(v for d in subdirs.get(s, []) for v in list_volumes(d)) for s in SPLITS}


def resolve_split(source: str | Path, split: str) -> list[Path]:
    """The volumes of `split` ("train", "validation" or "test") in a data source (split JSON,
    split CSV, or folder; see the module docstring). A folder without split information gives
    all its volumes. Raises InputError when nothing is found."""
    split = _SPLIT_ALIASES.get(split.lower(), split)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    src = Path(source)
    if src.is_file():
        name = src.name.lower()
        if name.endswith(".json"):
            paths = _read_split_json(src)[split]
        elif name.endswith(".csv"):
            paths = _read_split_csv(src)[split]
        elif _is_volume_file(src):
            paths = [src]
        else:
            raise InputError(f"{src}: not a split file (.json/.csv), a volume or a folder")
    elif src.is_dir():
        splits = _read_split_folder(src)
        paths = list_volumes(src) if splits is None else splits[split]
    else:
        raise InputError(f"{src}: no such file or folder")
    if not paths:
        raise InputError(f"{src}: no {split} volumes found")
    return paths


class VolumeCache:
    """Least-recently-used cache bounded by bytes (thread-safe). `get(key, load)` returns the
    cached value or calls `load()`; `load` returns (value, nbytes). An entry larger than the
    whole bound is returned but not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def get(self, key: Any, load: Callable[[], tuple[Any, int]]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
        value, nbytes = load()
        with self._lock:
            if nbytes <= self.max_bytes and key not in self._items:
                self._items[key] = (value, int(nbytes))
                self.nbytes += int(nbytes)
                while self.nbytes > self.max_bytes:
                    _, (_, n) = self._items.popitem(last=False)
                    self.nbytes -= n
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


@dataclass
class _Candidates:
    """The usable slices of one volume in one orientation, ready to sample."""
    images: np.ndarray             # (M, H, W) float32, display orientation
    pixel_spacing: tuple[float, float]

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)


def sample_rng(seed: int, stream: int, epoch: int, index: int) -> np.random.Generator:
    """The numpy generator of one clean sample: independent streams per (seed, stream, epoch,
    index), whatever the process that draws it."""
    return np.random.default_rng(np.random.SeedSequence(
        entropy=int(seed), spawn_key=(int(stream), int(epoch), int(index))))


def _report(message: str) -> None:
    print(f"MotionSSIM: {message}", file=sys.stderr, flush=True)


def _skip_message(path: str, exc: BaseException) -> str:
    """One line; engine errors already name the file, others get it prepended."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"skipping {msg}" if Path(path).name in msg else f"skipping {path}: {msg}"


def _volume_info(vol: Any) -> dict[str, Any]:
    from ..imaging import geometry

    spacing = tuple(float(s) for s in vol.spacing)
    anisotropic = max(spacing) / min(spacing) > ANISOTROPY_RATIO
    return {"anisotropic": anisotropic, "auto": geometry.resolve_orientation(vol, "auto"),
            "shape": tuple(int(s) for s in vol.array.shape), "spacing": spacing}


def central_candidates(stack: Any, min_foreground: float = MIN_FOREGROUND) -> np.ndarray:
    """Positions in a SliceStack of the central half of slices that are not empty: the slices
    [N/4, N - N/4) whose foreground share is >= min_foreground; if none is, the central-half
    slice with the most foreground (an all-dark central half still yields a sample)."""
    n = len(stack.images)
    lo, hi = n // 4, n - n // 4
    if hi <= lo:  # 1-3 slices: the central half is the middle slice
        lo, hi = (n - 1) // 2, (n - 1) // 2 + 1
    fg = np.asarray(stack.foreground, dtype=np.float64)[lo:hi]
    keep = np.flatnonzero(fg >= min_foreground)
    if keep.size == 0:
        keep = np.array([int(np.argmax(fg))])
    return keep + lo


def slice_candidates(stack: Any, slices: str = "central",
                     min_foreground: float = MIN_FOREGROUND) -> np.ndarray:
    """Positions in a SliceStack that samples are drawn from. "central": the paper's protocol
    (`central_candidates`). "all": every slice with foreground >= min_foreground, so that the
    model also learns the top and bottom of the head, which a whole-volume assessment reads
    (trained on the central half only, a model read the sample's clean edge slices low);
    falls back to "central" when no slice qualifies."""
    if slices == "central":
        return central_candidates(stack, min_foreground)
    if slices != "all":
        raise ValueError(f"slices: {slices!r} is not one of {SLICE_RANGES}")
    keep = np.flatnonzero(np.asarray(stack.foreground, dtype=np.float64) >= min_foreground)
    return keep if keep.size else central_candidates(stack, min_foreground)


VOLUME_CACHE_SHARE = 0.25  # of SliceDataset.cache_bytes, for whole volumes (on top of the slices)


@dataclass
class SliceDataset(torch.utils.data.Dataset):
    """Clean model-input slices drawn on the fly from a list of volumes.

    Items are indexed by keys (stream, epoch, index) (see `sample_rng`); `dataset[key]` returns
    (image (1, S, S) float32 tensor in [0, 1], key). Volumes are read with `io.read_volume` and
    their usable slices are kept in a byte-bounded LRU cache (one per process: each DataLoader
    worker has its own). Whole volumes sit in a separate, small cache (`VOLUME_CACHE_SHARE` of
    the bound): they are only needed to cut a new orientation, and sharing one bound with the
    slices let them evict the slices every draw needs (a data set larger than the bound then
    re-read a compressed volume for almost every sample: 2 samples/s). A volume that cannot be
    read is reported once per process and skipped (the sample is redrawn from the same random
    stream)."""

    paths: Sequence[str | Path]
    seed: int = 0
    input_size: int = 256
    cache_bytes: int = 2 << 30
    min_foreground: float = MIN_FOREGROUND
    slices: str = "central"  # see slice_candidates
    _cache: VolumeCache | None = field(default=None, init=False, repr=False)
    _volumes: VolumeCache | None = field(default=None, init=False, repr=False)
    _info: dict = field(default_factory=dict, init=False, repr=False)
    _bad: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self.paths = [str(p) for p in self.paths]
        if not self.paths:
            raise InputError("no volumes to draw training samples from")
        if self.slices not in SLICE_RANGES:
            raise InputError(f"slices: {self.slices!r} is not one of {SLICE_RANGES}")

    # The cache is created lazily so that a pickled dataset (DataLoader workers) starts empty.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None
        state["_volumes"] = None
        return state

    @property
    def cache(self) -> VolumeCache:
        """The usable slices of each (volume, orientation): what every draw reads."""
        if self._cache is None:
            self._cache = VolumeCache(self.cache_bytes)
        return self._cache

    @property
    def volume_cache(self) -> VolumeCache:
        """Whole volumes, read again only when a new orientation of them is cut."""
        if self._volumes is None:
            self._volumes = VolumeCache(int(self.cache_bytes * VOLUME_CACHE_SHARE))
        return self._volumes

    def __len__(self) -> int:  # nominal: keys, not positions, index this data set
        return len(self.paths)

    def _read(self, path: str) -> tuple[Any, int]:
        from ..imaging import io

        vol = io.read_volume(path)
        self._info[path] = _volume_info(vol)
        return vol, int(vol.array.nbytes)

    def _volume(self, path: str) -> Any:
        return self.volume_cache.get(("volume", path), lambda: self._read(path))

    def _candidates(self, path: str, orientation: str) -> _Candidates:
        from ..imaging import geometry

        def load() -> tuple[_Candidates, int]:
            stack = geometry.extract_slices(self._volume(path), orientation)
            keep = slice_candidates(stack, self.slices, self.min_foreground)
            c = _Candidates(np.ascontiguousarray(stack.images[keep], dtype=np.float32),
                            tuple(float(s) for s in stack.pixel_spacing))
            return c, c.nbytes

        return self.cache.get(("slices", path, orientation, self.slices), load)

    def _orientation(self, path: str, rng: np.random.Generator) -> str:
        from ..imaging import geometry

        # Always draw, so that the random stream does not depend on the volume.
        pick = geometry.ORIENTATIONS[int(rng.integers(3))]
        if path not in self._info:
            self._volume(path)
        info = self._info[path]
        # a thin stack (fewer than THIN_AXIS voxels along an axis) is cut in its own plane only:
        # any other plane gives strips, which extract_slices refuses
        fixed = info["anisotropic"] or min(info["shape"]) < geometry.THIN_AXIS
        return info["auto"] if fixed else pick

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """One clean slice (H, W) float32 (display orientation, before model-input fitting) and
        where it came from, drawn with `rng`."""
        for _ in range(100):
            path = self.paths[int(rng.integers(len(self.paths)))]
            if path in self._bad:
                continue
            try:
                orientation = self._orientation(path, rng)
                cand = self._candidates(path, orientation)
            except (MotionSSIMError, OSError, ValueError, RuntimeError) as exc:
                self._bad.add(path)
                _report(_skip_message(path, exc))
                if len(self._bad) == len(set(self.paths)):
                    raise InputError("no usable volume: every volume failed to read") from None
                continue
            j = int(rng.integers(len(cand.images)))
            return cand.images[j], {"path": path, "orientation": orientation,
                                    "pixel_spacing": cand.pixel_spacing}
        raise InputError("no usable volume found after 100 draws")

    def clean_sample(self, key: tuple[int, int, int]) -> np.ndarray:
        """The clean model-input slice (S, S) float32 in [0, 1] of `key` = (stream, epoch, i):
        the drawn slice cut to its head window (the clean slice's box, before any corruption)
        and fitted, as `geometry.to_model_input` does for inference."""
        from ..imaging import geometry

        stream, epoch, index = key
        image, where = self.draw(sample_rng(self.seed, stream, epoch, index))
        out = geometry.to_model_input(image, where["pixel_spacing"], size=self.input_size)
        return np.asarray(out, dtype=np.float32).reshape(self.input_size, self.input_size)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        key = tuple(int(k) for k in key)
        return torch.from_numpy(self.clean_sample(key))[None], key


def check_volumes(paths: Sequence[str | Path], report: Callable[[str], None] | None = _report,
                  progress: bool = False, what: str = "volumes") -> tuple[list[str], list[dict]]:
    """Read every volume once: returns (the readable paths, a summary per readable volume).
    Each unreadable one is reported once (via `report`) and left out; InputError when none is
    usable."""
    from ..imaging import io

    good: list[str] = []
    infos: list[dict] = []
    items = [str(p) for p in paths]
    iterator: Any = items
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(items, desc=f"checking {what}", unit="vol", leave=False)
    for p in iterator:
        try:
            vol = io.read_volume(p)
            info = _volume_info(vol)
        except (MotionSSIMError, OSError, ValueError, RuntimeError) as exc:
            if report is not None:
                report(_skip_message(p, exc))
            continue
        good.append(p)
        infos.append({"path": p, **info})
    if not good:
        raise InputError(f"no usable {what}: none of the {len(items)} given could be read")
    return good, infos


def summarize_volumes(infos: Sequence[dict]) -> dict[str, Any]:
    """A short, JSON-able summary of a list of `check_volumes` infos (checkpoint metadata)."""
    if not infos:
        return {"volumes": 0}
    orient: dict[str, int] = {}
    for i in infos:
        key = i["auto"] if i["anisotropic"] else "isotropic"
        orient[key] = orient.get(key, 0) + 1
    return {
        "volumes": len(infos),
        "anisotropic": int(sum(bool(i["anisotropic"]) for i in infos)),
        "acquisition_planes": orient,
        "files": [Path(i["path"]).name for i in infos[:1000]],
    }

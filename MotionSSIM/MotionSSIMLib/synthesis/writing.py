"""Stage 4: synthetic data sets written to disk, reproducibly and in parallel.

Seeds: `write_dataset` derives the generator of subject `index` of split `split` from
`numpy.random.SeedSequence(entropy=seed, spawn_key=(SPLIT_IDS[split], index))`, so every
subject (and its deformation) is independent of the others, of the split sizes and of the
number of workers, and held-out subjects never share a stream with training subjects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..imaging.geometry import Volume
from .anatomy import TEMPLATE_FILES, load_tissue_model
from .contrast import KINDS
from .subject import _checked_options, synth_subject_info

__all__ = ["SPLIT_IDS", "subject_rng", "write_dataset"]

SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


# --------------------------------------------------------------------------- data sets
def subject_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of subject `index` of `split` ("train", "validation", "test")."""
    sequence = np.random.SeedSequence(entropy=int(seed), spawn_key=(SPLIT_IDS[split], int(index)))
    return np.random.default_rng(sequence)


def _worker_init() -> None:
    # The processes are the parallelism; a forked torch thread pool is also unsafe to use.
    torch.set_num_threads(1)


def save_subject(vol: Volume, path: str | Path) -> Path:
    """Write a synthetic subject as NIfTI (int16, scanner geometry in qform and sform)."""
    import nibabel as nib

    # int16 like most scanners' output; synth_subject already drew a random intensity scale.
    data = np.clip(np.round(vol.array), 0, 32767).astype(np.int16)
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), vol.ijk_to_ras())
    img.set_qform(vol.ijk_to_ras(), code=1)
    img.set_sform(vol.ijk_to_ras(), code=1)
    img.header.set_xyzt_units("mm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def _write_one(job: tuple) -> dict:
    """Generate and save one subject (run in a worker process)."""
    out_dir, split, index, seed, kind, isotropic, options = job
    vol, info = synth_subject_info(subject_rng(seed, split, index), kind, isotropic,
                                   options=options)
    folder = "train" if split == "train" else ("val" if split == "validation" else "test")
    rel = f"{folder}/synth_{split}_{index:05d}.nii.gz"
    save_subject(vol, Path(out_dir) / rel)
    info.update(path=rel, split=split, index=index)
    return info


def write_dataset(out_dir: str | Path, n_train: int, n_val: int, n_test: int, seed: int = 0,
                  kind: str = "random", isotropic: bool = False, workers: int = 1,
                  progress: Callable[[int, int], None] | None = None,
                  options: dict | None = None) -> Path:
    """Write synthetic subjects as int16 NIfTI under out_dir/{train,val,test}/.

    Also writes out_dir/split.json ({"train", "validation", "test"}: paths relative to
    out_dir) and out_dir/dataset.json (generation parameters, seed streams, per-subject draws).
    options: draws forced on every subject (see `synth_subject`), e.g. {"skull_stripped":
    True} for a supplement that raises one feature's share in a training mix; recorded in
    dataset.json. Returns out_dir. Output is identical for any number of workers.
    """
    if kind not in ("random", *KINDS):
        raise ValueError(f"kind must be 'random' or one of {KINDS}, not {kind!r}")
    options = _checked_options(options)  # refused before any subject is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    load_tissue_model()   # build once here, so forked workers inherit it
    jobs = [(str(out), split, index, int(seed), kind, isotropic, options)
            for split, count in (("train", n_train), ("validation", n_val), ("test", n_test))
            for index in range(int(count))]
    results: list[dict] = []
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # fork shares the tissue model built above; spawn (Windows) rebuilds it per worker.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method),
                                 initializer=_worker_init) as pool:
            for info in pool.map(_write_one, jobs):
                results.append(info)
                if progress:
                    progress(len(results), len(jobs))
    else:
        for job in jobs:
            results.append(_write_one(job))
            if progress:
                progress(len(results), len(jobs))
    split = {name: [record["path"] for record in results if record["split"] == name]
             for name in SPLIT_IDS}
    (out / "split.json").write_text(json.dumps(split, indent=1), encoding="utf-8")
    meta = {
        "generator": "MotionSSIMLib.synthesis",
        "template": {key: f"nilearn/datasets/data/{file}" for key, file in TEMPLATE_FILES.items()},
        "seed": int(seed),
        "seed_streams": "numpy.random.default_rng(numpy.random.SeedSequence(entropy=seed, "
                        "spawn_key=(split_id, index))), split_id: train=0, validation=1, test=2",
        "kind": kind, "isotropic": bool(isotropic), "options": options,
        "counts": {"train": int(n_train), "validation": int(n_val), "test": int(n_test)},
        "format": "NIfTI-1 int16 (random intensity scale), qform = sform = scanner RAS",
        "subjects": results,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out

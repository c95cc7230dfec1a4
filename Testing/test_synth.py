"""Synthetic subjects from the MNI152 template (MotionSSIMLib.synth)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from MotionSSIMLib import geometry, synth

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("nilearn") is None,
                                reason="nilearn (MNI152 template) not installed")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Subjects are generated on one core; so are these tests (2 shared cores).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model() -> synth.TissueModel:
    return synth.load_tissue_model()


@pytest.fixture(scope="module")
def subjects(model) -> list[tuple[geometry.Volume, dict]]:
    # Six seeds picked to include 2D thick-slice scans and others; all drawn with kind="random".
    return [synth.synth_subject_info(np.random.default_rng(s)) for s in range(6)]


def _means_by_tissue(vol: geometry.Volume, model: synth.TissueModel) -> dict[str, float]:
    """Mean intensity of the volume over each pure template tissue, found through the affine.

    Every voxel centre goes through the volume's IJK->RAS and then the model grid's RAS->IJK:
    a wrong origin, spacing or direction would land voxels on the wrong tissue.
    """
    step = 2 if vol.array.size > 4_000_000 else 1   # every 2nd voxel of big volumes: faster
    sub = vol.array[::step, ::step, ::step]
    k, j, i = np.indices(sub.shape).reshape(3, -1) * step
    ras = vol.ijk_to_ras() @ np.stack([i, j, k, np.ones_like(i)]).astype(float)
    idx = np.rint(ras[:3] - model.origin[:, None]).astype(int)     # model: 1 mm, RAS axes
    inside = np.all((idx >= 0) & (idx < np.array(model.shape[::-1])[:, None]), axis=0)
    flat = np.ravel_multi_index((idx[2, inside], idx[1, inside], idx[0, inside]), model.shape)
    values = sub.reshape(-1)[inside]
    out = {}
    for name, mask in model.tissue_masks(purity=0.9).items():
        sel = mask.reshape(-1)[flat]
        assert sel.sum() > 200, f"too few {name} voxels in the field of view"
        out[name] = float(values[sel].mean())
    return out


def test_model_tissues(model):
    masks = model.tissue_masks()
    vol_ml = {name: m.sum() / 1000.0 for name, m in masks.items()}   # 1 mm voxels -> ml
    assert 400 < vol_ml["gm"] < 1100 and 300 < vol_ml["wm"] < 900 and vol_ml["csf"] > 20
    assert not (masks["gm"] & masks["wm"]).any()
    assert np.allclose(model.brain_frac.sum(0), 1.0, atol=1e-4)
    assert np.all(model.brain_frac >= -1e-6)
    # The head (brain plus scalp) is about 15-23 cm along each axis.
    assert np.all((model.extent > 150) & (model.extent < 240)), model.extent


def test_same_seed_same_subject_and_seeds_differ():
    a = synth.synth_subject(np.random.default_rng(7), kind="random")
    b = synth.synth_subject(np.random.default_rng(7), kind="random")
    c = synth.synth_subject(np.random.default_rng(8), kind="random")
    assert a.array.shape == b.array.shape
    np.testing.assert_array_equal(a.array, b.array)
    assert a.spacing == b.spacing and a.origin == b.origin
    np.testing.assert_array_equal(a.directions, b.directions)
    assert a.array.shape != c.array.shape or not np.allclose(a.array, c.array)


def test_random_subjects_geometry_and_intensities(subjects):
    ratios = []
    for vol, info in subjects:
        arr = vol.array
        assert arr.ndim == 3 and arr.dtype == np.float32 and min(arr.shape) >= 8
        assert np.isfinite(arr).all() and arr.min() >= 0 and arr.std() > 0
        d = np.asarray(vol.directions)
        np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-6)   # orthonormal columns
        sp = np.asarray(vol.spacing)
        assert np.all(sp >= 0.5) and np.all(sp <= 7.5), sp
        ratios.append(sp.max() / sp.min())
        # Head: a plausible share of the field of view, not the whole of it nor a speck.
        head = arr > 0.1 * np.percentile(arr, 99.5)
        assert 0.05 < head.mean() < 0.95, (info, head.mean())
        # Field of view in mm: heads are scanned with roughly 15-35 cm fields.
        fov = np.array(arr.shape[::-1]) * sp
        assert np.all(fov[:2] > 100) and np.all(fov[:2] < 420), fov
        assert info["kind"] in synth.KINDS
    assert max(ratios) > 2.5, "no thick-slice (anisotropic) subject among the random ones"
    assert min(ratios) < 1.3, "no near-isotropic subject among the random ones"


def test_acquisitions_vary():
    rng = np.random.default_rng(0)
    model = synth.load_tissue_model()
    acqs = [synth._acquisition(rng, "t2", model) for _ in range(200)]
    planes = {a["plane"] for a in acqs}
    assert planes == {"axial", "coronal", "sagittal"}
    thick = np.array([a["spacing"][2] for a in acqs])
    inplane = np.array([a["spacing"][0] for a in acqs])
    assert thick.max() > 5.5 and (thick > 3).mean() > 0.4
    assert inplane.min() < 0.7 and inplane.max() > 1.2 and inplane.max() <= 1.3
    matrix = np.array([a["size"][0] for a in acqs])
    assert matrix.min() < 200 and matrix.max() > 280
    assert any(a["oblique_deg"] > 5 for a in acqs)
    dwi = [synth._acquisition(rng, "dwi", model) for _ in range(50)]
    assert all(a["spacing"][0] >= 1.5 for a in dwi)   # EPI: coarse in-plane


@pytest.mark.parametrize("kind,order", [
    ("t1", ("wm", "gm", "csf")),
    ("t2", ("csf", "gm", "wm")),
    ("flair", ("gm", "wm", "csf")),
])
def test_contrast_ordering_on_template(model, kind, order):
    # No deformation and the isotropic grid: the volume lies on the template's own grid.
    vol = synth.synth_subject(np.random.default_rng(3), kind=kind, isotropic=True, deform=False)
    assert vol.array.shape == model.shape
    np.testing.assert_allclose(vol.ijk_to_ras()[:3, 3], model.origin)
    m = _means_by_tissue(vol, model)
    assert m[order[0]] > 1.1 * m[order[1]] > 1.1 * 1.1 * m[order[2]], m


def test_affine_of_random_acquisitions_maps_anatomy(model):
    # Random planes, signs, obliquity, thick slices; no deformation so the template's masks
    # still tell where each tissue is. T1 ordering must survive the trip through the affine.
    seen = set()
    for seed in range(4):
        vol, info = synth.synth_subject_info(np.random.default_rng(100 + seed), kind="t1",
                                             deform=False)
        seen.add(info["plane"])
        m = _means_by_tissue(vol, model)
        assert m["wm"] > m["gm"] > m["csf"], (info["plane"], info["spacing"], m)
    assert len(seen) >= 2


def test_kinds_and_bad_kind():
    rng = np.random.default_rng(5)
    vol, info = synth.synth_subject_info(rng, kind="dwi")
    assert info["kind"] == "dwi" and min(vol.spacing[:2]) >= 1.5
    with pytest.raises(ValueError, match="kind"):
        synth.synth_subject(rng, kind="ct")


def test_resample_thick_slices():
    arr = np.zeros((40, 32, 24), np.float32)
    arr[:, :, :] = np.arange(40, dtype=np.float32)[:, None, None]   # ramp along k
    arr[:, 10:20, 8:16] += 100.0
    d = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    vol = geometry.volume(arr, spacing=(1.0, 1.0, 1.0), directions=d, origin=(5.0, 6.0, 7.0))
    out = synth.resample(vol, (2.0, 1.0, 5.0))
    assert out.array.shape == (8, 32, 12)
    assert out.spacing == (2.0, 1.0, 5.0)
    np.testing.assert_allclose(out.directions, d)
    # Edge-aligned grids: the first new voxel centre sits half a new voxel into the old extent.
    np.testing.assert_allclose(out.origin, np.array([5.0, 6, 7]) + d @ [0.5, 0.0, 2.0])
    # A box profile over 5 slices averages the ramp: slice m holds mean(5m .. 5m+4).
    np.testing.assert_allclose(out.array[:, 0, 0], np.arange(8) * 5 + 2.0, atol=1e-4)
    noisy = synth.resample(vol, (2.0, 1.0, 5.0), rng=np.random.default_rng(0))
    assert not np.allclose(noisy.array, out.array) and np.isfinite(noisy.array).all()


def test_write_dataset_and_cli(tmp_path):
    out = synth.write_dataset(tmp_path / "ds", 2, 1, 1, seed=11)
    split = json.loads((out / "split.json").read_text())
    assert set(split) == {"train", "validation", "test"}
    assert [len(split[s]) for s in ("train", "validation", "test")] == [2, 1, 1]
    paths = [p for s in split.values() for p in s]
    assert len(set(paths)) == 4
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["seed"] == 11 and meta["counts"] == {"train": 2, "validation": 1, "test": 1}
    assert "SeedSequence" in meta["seed_streams"] and len(meta["subjects"]) == 4
    for rel in paths:
        assert not Path(rel).is_absolute()
        img = nib.load(out / rel)
        data = np.asarray(img.dataobj)
        assert data.ndim == 3 and data.dtype == np.int16 and data.max() > 100
    # The file holds exactly what the subject's seed stream generates, on the same grid.
    vol = synth.synth_subject(synth.subject_rng(11, "validation", 0))
    img = nib.load(out / split["validation"][0])
    np.testing.assert_allclose(img.affine, vol.ijk_to_ras(), atol=1e-4)
    ref = np.clip(np.round(vol.array), 0, 32767).transpose(2, 1, 0)
    np.testing.assert_array_equal(np.asarray(img.dataobj), ref)
    # Held-out streams differ from training streams.
    train0 = np.asarray(nib.load(out / split["train"][0]).dataobj)
    test0 = np.asarray(nib.load(out / split["test"][0]).dataobj)
    assert train0.shape != test0.shape or not np.array_equal(train0, test0)

    # The command line, with two workers, writes the same volume for the same seed stream.
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_dataset", ROOT / "scripts" / "make_synthetic_dataset.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    rc = cli.main(["--out", str(tmp_path / "cli"), "--train", "1", "--val", "1", "--test", "0",
                   "--seed", "11", "--workers", "2"])
    assert rc == 0
    split2 = json.loads((tmp_path / "cli" / "split.json").read_text())
    a = np.asarray(nib.load(tmp_path / "cli" / split2["validation"][0]).dataobj)
    np.testing.assert_array_equal(a, np.asarray(img.dataobj))
    assert cli.main(["--out", str(tmp_path / "x"), "--train", "-1"]) == 2

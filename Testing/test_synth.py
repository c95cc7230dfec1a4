"""Synthetic subjects from the MNI152 template (MotionSSIMLib.synthesis)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from MotionSSIMLib.imaging import geometry
from MotionSSIMLib.synthesis import acquisition, anatomy, contrast, subject, writing

ROOT = Path(__file__).resolve().parents[1]
# No anatomical changes: the template's tissue masks then tell where each tissue is.
NO_ANATOMY = {"ventricle_mm": 0.0, "sulcal_mm": 0.0, "lesions": 0, "mass": False,
              "skull_stripped": False, "vessels": False}

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
def model() -> anatomy.TissueModel:
    return anatomy.load_tissue_model()


@pytest.fixture(scope="module")
def subjects(model) -> list[tuple[geometry.Volume, dict]]:
    # Six seeds picked to include 2D thick-slice scans and others; all drawn with kind="random".
    return [subject.synth_subject_info(np.random.default_rng(s)) for s in range(6)]


def _means_by_tissue(vol: geometry.Volume, model: anatomy.TissueModel) -> dict[str, float]:
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
    a = subject.synth_subject(np.random.default_rng(7), kind="random")
    b = subject.synth_subject(np.random.default_rng(7), kind="random")
    c = subject.synth_subject(np.random.default_rng(8), kind="random")
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
        assert np.all(sp >= 0.3) and np.all(sp <= 7.5), sp
        ratios.append(sp.max() / sp.min())
        # Head: a plausible share of the field of view, not the whole of it nor a speck.
        head = arr > 0.1 * np.percentile(arr, 99.5)
        assert 0.05 < head.mean() < 0.99, (info, head.mean())
        # Field of view in mm: heads are scanned with roughly 15-35 cm fields.
        fov = np.array(arr.shape[::-1]) * sp
        assert np.all(fov[:2] > 100) and np.all(fov[:2] < 420), fov
        assert info["kind"] in contrast.KINDS
    assert max(ratios) > 2.5, "no thick-slice (anisotropic) subject among the random ones"
    assert min(ratios) < 1.3, "no near-isotropic subject among the random ones"


def test_acquisitions_vary():
    rng = np.random.default_rng(0)
    model = anatomy.load_tissue_model()
    acqs = [acquisition._acquisition(rng, "t2", model) for _ in range(300)]
    planes = {a["plane"] for a in acqs}
    assert planes == {"axial", "coronal", "sagittal"}
    thick = np.array([a["spacing"][2] for a in acqs])
    assert thick.max() > 5.5 and (thick > 3).mean() > 0.4
    assert any(a["oblique_deg"] > 5 for a in acqs)
    assert any(a["partial_fov"] for a in acqs) and not all(a["partial_fov"] for a in acqs)
    # Over every contrast: in-plane voxels ~0.4-3 mm acquired, matrices 64-512.
    acqs += [acquisition._acquisition(rng, kind, model)
             for kind in contrast.KINDS for _ in range(60)]
    acquired = np.array([a["recon"]["acquired_spacing"] for a in acqs])
    pixel = np.array([a["spacing"][0] for a in acqs])
    matrix = np.array([a["size"][:2] for a in acqs])
    assert acquired.min() < 0.45 and acquired.max() > 2.7, (acquired.min(), acquired.max())
    assert pixel.min() < 0.45 and pixel.max() > 2.5
    lo, hi = acquisition.MATRIX_RANGE
    assert matrix.min() >= lo and matrix.max() <= hi
    assert matrix.min() <= 70 and matrix.max() >= 480, (matrix.min(), matrix.max())
    assert np.all(np.abs(np.array([a["spacing"][0] - a["spacing"][1] for a in acqs])) < 1e-9)
    methods = [a["recon"]["method"] for a in acqs]
    assert 0.5 < methods.count("kspace") / len(methods) < 0.8
    for a in acqs:
        r = a["recon"]
        # Zero-filled: output matrix = 1-2x the acquired one; sampled at least as finely.
        assert all(r["acquired"][i] <= a["size"][i] <= 2 * r["acquired"][i] + 1 for i in (0, 1))
        assert all(r["sample"][i] >= r["acquired"][i] for i in (0, 1))
    dwi = [acquisition._acquisition(rng, "dwi", model) for _ in range(50)]
    assert all(a["recon"]["acquired_spacing"] >= 1.2 - 0.05 for a in dwi
               if not a["partial_fov"])   # EPI: coarse in-plane


@pytest.mark.parametrize("kind,order", [
    ("t1", ("wm", "gm", "csf")),
    ("t2", ("csf", "gm", "wm")),
    ("flair", ("gm", "wm", "csf")),
])
def test_contrast_ordering_on_template(model, kind, order):
    # No deformation and the isotropic grid: the volume lies on the template's own grid.
    vol = subject.synth_subject(np.random.default_rng(3), kind=kind, isotropic=True, deform=False,
                                options=NO_ANATOMY)
    assert vol.array.shape == model.shape
    np.testing.assert_allclose(vol.ijk_to_ras()[:3, 3], model.origin)
    m = _means_by_tissue(vol, model)
    assert m[order[0]] > 1.1 * m[order[1]] > 1.1 * 1.1 * m[order[2]], m


def test_affine_of_random_acquisitions_maps_anatomy(model):
    # Random planes, signs, obliquity, thick slices; no deformation so the template's masks
    # still tell where each tissue is. T1 ordering must survive the trip through the affine.
    seen = set()
    for seed in range(4):
        vol, info = subject.synth_subject_info(np.random.default_rng(100 + seed), kind="t1",
                                               deform=False, options=NO_ANATOMY)
        seen.add(info["plane"])
        m = _means_by_tissue(vol, model)
        assert m["wm"] > m["gm"] > m["csf"], (info["plane"], info["spacing"], m)
    assert len(seen) >= 2


def test_kinds_and_bad_kind():
    rng = np.random.default_rng(5)
    vol, info = subject.synth_subject_info(rng, kind="dwi")
    assert info["kind"] == "dwi" and info["recon"]["acquired_spacing"] >= 1.15
    with pytest.raises(ValueError, match="kind"):
        subject.synth_subject(rng, kind="ct")


def _tissue(model, anat: dict, kind: str = "t2", seed: int = 0) -> np.ndarray:
    """The subject's clean image on the template grid (flat), contrast and draws from seed."""
    means, std, _ = contrast._contrast(np.random.default_rng(seed), kind)
    img, _ = contrast._tissue_image(np.random.default_rng(seed + 1), model, means, std,
                                    {**NO_ANATOMY, **anat})
    return img[0, 0].numpy().ravel().copy(), means


def test_atrophy_enlarges_ventricles(model):
    base, means = _tissue(model, {})
    big, _ = _tissue(model, {"ventricle_mm": 4.0})
    bi = model.brain_index
    near = bi[model.brain_vent_dist < 12]
    # T2: CSF is the brightest brain tissue; count CSF-like voxels round the ventricles.
    thr = 0.5 * (means[anatomy.C["csf"]] + means[anatomy.C["gm"]])
    v0, v1 = (base[near] > thr).sum() / 1000, (big[near] > thr).sum() / 1000   # ml
    assert 20 < v0 < 70 and v1 > 1.6 * v0, (v0, v1)
    # The skull and scalp do not change; sulcal widening adds CSF near the cortex too.
    np.testing.assert_array_equal(base[model.shell_index], big[model.shell_index])
    wide, _ = _tissue(model, {"sulcal_mm": 1.5})
    far = bi[model.brain_vent_dist > 20]
    assert (wide[far] > thr).sum() > 1.3 * (base[far] > thr).sum()


def test_lesions_and_mass_visible(model):
    base, means = _tissue(model, {}, kind="flair")
    les, _ = _tissue(model, {"lesions": 12}, kind="flair")
    bi = model.brain_index
    wm = bi[model.brain_frac[2] > 0.6]
    # FLAIR: lesions are brighter than any normal brain tissue.
    thr = 0.5 * (means[anatomy.C["lesion"]] + means[anatomy.C["gm"]])
    assert (base[wm] > thr).sum() < 50
    assert (les[wm] > thr).sum() > 100
    assert np.array_equal(les[model.shell_index], base[model.shell_index])   # inside only

    # Post-contrast mass: an enhancing rim round a darker core, changes only near its centre.
    means, std, _ = contrast._contrast(np.random.default_rng(4), "post")
    clean, _ = contrast._tissue_image(np.random.default_rng(9), model, means, std, NO_ANATOMY)
    anat = {**NO_ANATOMY, "mass": True}
    with_mass, drawn = contrast._tissue_image(np.random.default_rng(9), model, means, std, anat)
    m = drawn["mass"]
    diff = np.abs(with_mass[0, 0].numpy() - clean[0, 0].numpy())
    changed = np.argwhere(diff > 0.05)
    dist = np.linalg.norm(changed - np.array(m["centre_vox"]), axis=1)
    assert len(changed) > 2000 and dist.max() < 2.2 * 1.1 * m["radius_mm"] + 3, m
    img = with_mass[0, 0].numpy()
    assert img.max() >= 0.85 * means[anatomy.C["rim"]]   # the rim enhances
    if m["necrotic"]:
        c = tuple(m["centre_vox"])
        assert img[c] < 0.5 * means[anatomy.C["rim"]]


def test_skull_stripped_zero_outside_brain(model):
    vol, info = subject.synth_subject_info(
        np.random.default_rng(2), kind="t1", isotropic=True, deform=False,
        options={**NO_ANATOMY, "skull_stripped": True})
    assert "skull_stripped" in info["extras"]
    arr = vol.array.ravel()
    inside = np.zeros(arr.size, bool)
    inside[model.brain_index] = True
    assert np.count_nonzero(arr[~inside]) == 0
    assert np.count_nonzero(arr[inside]) > 0.99 * inside.sum()


def test_new_contrasts(model):
    seen = set()
    for seed in range(12):
        vol, info = subject.synth_subject_info(np.random.default_rng(seed), kind="inverted",
                                               isotropic=True, deform=False, options=NO_ANATOMY)
        if info["variant"] not in ("t1", "t2") or info["variant"] in seen:
            continue
        seen.add(info["variant"])
        m = _means_by_tissue(vol, model)
        # Flipped: inverted T1 has CSF > GM > WM, inverted T2 the reverse.
        order = ("csf", "gm", "wm") if info["variant"] == "t1" else ("wm", "gm", "csf")
        assert m[order[0]] > m[order[1]] > m[order[2]], (info["variant"], m)
    assert seen == {"t1", "t2"}
    vol, info = subject.synth_subject_info(np.random.default_rng(1), kind="post")
    assert info["anatomy"]["vessels"] and np.isfinite(vol.array).all()
    vol, info = subject.synth_subject_info(np.random.default_rng(1), kind="epi")
    assert info["recon"]["acquired_spacing"] >= 1.75 and "epi_distortion_mm" in info
    with pytest.raises(ValueError, match="unknown synth option"):
        subject.synth_subject(np.random.default_rng(0), options={"tumour": True})


def test_kspace_recon_rings_at_edges():
    # A sharp-edged square sampled on a 128 grid; 40 lines kept, zero-filled to 80.
    n = 128
    yy, xx = np.mgrid[:n, :n] - n // 2
    disc = torch.from_numpy(((np.abs(xx) <= 30) & (np.abs(yy) <= 30)).astype(np.float32))[None]
    rec = {"acquired": [40, 40], "phase_axis": 0, "phase_fraction": 1.0, "window": 0.0}
    sharp = acquisition._kspace_recon(disc, rec, (80, 80), 0.0, np.random.default_rng(0))[0]
    assert sharp.shape == (80, 80)
    row = sharp[40].numpy()             # through the centre (pixel 40 = the disc's centre)
    inside = row[40 - 16: 40 + 17]      # the square spans +-18.75 output pixels
    # Gibbs: the plateau overshoots 1 near the edge and oscillates; outside it rings > 0.
    assert inside.max() > 1.03 and inside.min() < 0.97, inside
    assert row[10:20].max() > 0.01   # ripples outside the disc (0 in the object)
    smooth = acquisition._kspace_recon(disc, {**rec, "window": 0.5}, (80, 80), 0.0,
                                       np.random.default_rng(0))[0].numpy()
    assert smooth[40].max() < row.max() - 0.02
    # The mean intensity is kept (DC preserved, same field of view; the magnitude adds a
    # little), and noise in k-space gives the asked sd.
    np.testing.assert_allclose(float(sharp.mean()), float(disc.mean()), rtol=0.05)
    flat = torch.ones((4, 64, 64))
    noisy = acquisition._kspace_recon(flat * 10, {**rec, "window": 0.3}, (64, 64), 0.5,
                                      np.random.default_rng(1))
    clean = acquisition._kspace_recon(flat * 10, {**rec, "window": 0.3}, (64, 64), 0.0,
                                      np.random.default_rng(1))   # same random phase, no noise
    sd = float((noisy - clean)[:, 16:48, 16:48].std())
    assert abs(sd / 0.5 - 1) < 0.1, sd


def test_subject_kspace_reconstruction_geometry(model):
    opts = {**NO_ANATOMY, "recon": "kspace", "spacing": 2.0, "zero_fill": 2.0, "window": 0.0,
            "snr": float("inf"), "bias_sd": 0.0}
    vol, info = subject.synth_subject_info(np.random.default_rng(21), kind="t1", deform=False,
                                           options=opts)
    r = info["recon"]
    assert r["method"] == "kspace" and r["zero_fill"] > 1.9
    assert abs(vol.spacing[0] - r["acquired_spacing"] / r["zero_fill"]) < 1e-3
    assert info["snr"] is None
    # No noise was added: the background away from the head is exactly 0 only without
    # ringing; here truncation leaves low ripples next to the head, as on scanners.
    arr = vol.array
    head = arr > 0.1 * arr.max()
    near = ndimage.binary_dilation(head, iterations=3) & ~ndimage.binary_dilation(head)
    assert np.mean(arr[near] > 1e-3 * arr.max()) > 0.5
    # The anatomy lands where the affine says (T1: WM > GM > CSF) through k-space too.
    m = _means_by_tissue(vol, model)
    assert m["wm"] > m["gm"] > m["csf"], m


def test_resample_thick_slices():
    arr = np.zeros((40, 32, 24), np.float32)
    arr[:, :, :] = np.arange(40, dtype=np.float32)[:, None, None]   # ramp along k
    arr[:, 10:20, 8:16] += 100.0
    d = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])
    vol = geometry.volume(arr, spacing=(1.0, 1.0, 1.0), directions=d, origin=(5.0, 6.0, 7.0))
    out = subject.resample(vol, (2.0, 1.0, 5.0))
    assert out.array.shape == (8, 32, 12)
    assert out.spacing == (2.0, 1.0, 5.0)
    np.testing.assert_allclose(out.directions, d)
    # Edge-aligned grids: the first new voxel centre sits half a new voxel into the old extent.
    np.testing.assert_allclose(out.origin, np.array([5.0, 6, 7]) + d @ [0.5, 0.0, 2.0])
    # A box profile over 5 slices averages the ramp: slice m holds mean(5m .. 5m+4).
    np.testing.assert_allclose(out.array[:, 0, 0], np.arange(8) * 5 + 2.0, atol=1e-4)
    noisy = subject.resample(vol, (2.0, 1.0, 5.0), rng=np.random.default_rng(0))
    assert not np.allclose(noisy.array, out.array) and np.isfinite(noisy.array).all()


def test_write_dataset_and_cli(tmp_path):
    out = writing.write_dataset(tmp_path / "ds", 2, 1, 1, seed=11)
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
    vol = subject.synth_subject(writing.subject_rng(11, "validation", 0))
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

    # A supplement: a draw forced on every subject, recorded; the rest of the draw unchanged.
    rc = cli.main(["--out", str(tmp_path / "strip"), "--train", "0", "--val", "1", "--test", "0",
                   "--seed", "11", "--force", "skull_stripped=true", "--force", "snr=40"])
    assert rc == 0
    meta3 = json.loads((tmp_path / "strip" / "dataset.json").read_text())
    assert meta3["options"] == {"skull_stripped": True, "snr": 40}
    assert meta3["subjects"][0]["anatomy"]["skull_stripped"] is True
    assert meta3["subjects"][0]["snr"] == 40
    assert meta3["subjects"][0]["kind"] == meta["subjects"][2]["kind"]  # same stream
    stripped = np.asarray(nib.load(tmp_path / "strip" / "val" / Path(split["validation"][0]).name)
                          .dataobj)
    head = subject.synth_subject(writing.subject_rng(11, "validation", 0),
                                 options={"snr": 40, "skull_stripped": False})
    head = np.clip(np.round(head.array), 0, 32767).transpose(2, 1, 0)
    assert stripped.shape == head.shape and (stripped == 0).mean() > (head == 0).mean() + 0.05
    for bad in (["--force", "skull_stripped"], ["--force", "colour=red"]):
        assert cli.main(["--out", str(tmp_path / "x"), "--train", "1", *bad]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="unknown synth option"):
        writing.write_dataset(tmp_path / "y", 1, 0, 0, options={"colour": "red"})

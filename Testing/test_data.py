"""Training data: split files, the byte-bounded cache, on-the-fly clean slices, batch corruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MotionSSIMLib.base.errors import InputError
from MotionSSIMLib.simulation import pipeline
from MotionSSIMLib.training import data


def write_volume(path, array, spacing=(1.0, 1.0, 1.0)):
    """array indexed [k, j, i] (as sitk.GetArrayFromImage), identity direction."""
    img = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(img, str(path))
    return path


def head(rng, shape=(24, 64, 64)):
    """An ellipsoid 'head' with texture on a zero background, (k, j, i)."""
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (k / 0.9) ** 2 + (j / 0.8) ** 2 + (i / 0.7) ** 2 < 1
    tex = rng.random(shape) * 0.3 + 0.7 + 0.5 * np.sin(6 * j + rng.random()) * np.cos(5 * i)
    return np.where(inside, 100 * tex, 0).astype(np.float32)


# ----------------------------------------------------------------------------- split sources


def test_split_json_csv_and_folders(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        (tmp_path / "tree" / split).mkdir(parents=True)
        write_volume(tmp_path / "tree" / split / f"{split}_a.nii.gz", head(rng, (8, 32, 32)))
    write_volume(tmp_path / "tree" / "train" / "b.nrrd", head(rng, (8, 32, 32)))
    # a DICOM-like folder counts as one volume and is not descended into
    (tmp_path / "tree" / "train" / "dicom").mkdir()
    (tmp_path / "tree" / "train" / "dicom" / "x.dcm").write_bytes(b"")
    tree = tmp_path / "tree"
    assert [p.name for p in data.resolve_split(tree, "train")] == ["b.nrrd", "dicom",
                                                                    "train_a.nii.gz"]
    assert [p.name for p in data.resolve_split(tree, "validation")] == ["val_a.nii.gz"]
    assert [p.name for p in data.resolve_split(tree, "test")] == ["test_a.nii.gz"]

    split = {"train": ["tree/train/b.nrrd"], "validation": ["tree/val/val_a.nii.gz"],
             "test": [], "settings": {"seed": 1}}
    (tmp_path / "split.json").write_text(json.dumps(split))
    got = data.resolve_split(tmp_path / "split.json", "train")
    assert got == [tmp_path / "tree/train/b.nrrd"]
    with pytest.raises(InputError, match="no test volumes"):
        data.resolve_split(tmp_path / "split.json", "test")

    (tmp_path / "split.csv").write_text("path,split\ntree/train/b.nrrd,train\n"
                                        "tree/test/test_a.nii.gz,test\n")
    assert data.resolve_split(tmp_path / "split.csv", "test") == [tmp_path / "tree/test/test_a.nii.gz"]
    (tmp_path / "bad.csv").write_text("file\nx.nii\n")
    with pytest.raises(InputError, match="path,split"):
        data.resolve_split(tmp_path / "bad.csv", "train")
    # a flat folder: every volume, for any split
    assert len(data.resolve_split(tree / "train", "test")) == 3
    with pytest.raises(InputError, match="no such file"):
        data.resolve_split(tmp_path / "missing", "train")


def test_cache_is_lru_bounded_by_bytes():
    cache = data.VolumeCache(max_bytes=100)
    loads = []

    def loader(key, n):
        def load():
            loads.append(key)
            return key, n
        return load

    assert cache.get("a", loader("a", 40)) == "a"
    cache.get("b", loader("b", 40))
    cache.get("a", loader("a", 40))          # hit: a becomes most recent
    cache.get("c", loader("c", 40))          # 120 > 100: evicts b (least recent)
    assert "a" in cache and "c" in cache and "b" not in cache
    assert cache.nbytes == 80 and loads == ["a", "b", "c"]
    cache.get("big", loader("big", 500))     # larger than the bound: returned, not kept
    assert "big" not in cache and cache.nbytes == 80
    cache.get("a", loader("a", 40))
    assert loads == ["a", "b", "c", "big"] and cache.hits == 2


# ----------------------------------------------------------------------------- clean samples


def test_samples_deterministic_central_and_not_empty(tmp_path):
    # Anisotropic volume (3 mm along k): always the acquisition plane. Each axial slice k
    # carries its index as intensity, and only slices 8..13 of 24 have any content.
    arr = np.zeros((24, 48, 48), np.float32)
    for k in range(8, 14):
        arr[k, 10:38, 12:36] = 10.0 * (k + 1)
        arr[k, 12 + 2 * k, 14:20] = 10.0 * (k + 1) + 3  # a mark that tells slices apart
    aniso = write_volume(tmp_path / "aniso.nii.gz", arr, spacing=(1.0, 1.0, 3.0))
    ds = data.SliceDataset([aniso], seed=3, input_size=64)
    from MotionSSIMLib.imaging import geometry, io

    auto = geometry.resolve_orientation(io.read_volume(aniso), "auto")
    seen = set()
    for i in range(40):
        img, where = ds.draw(data.sample_rng(3, 0, 0, i))
        assert where["orientation"] == auto
        k = int(img.max() // 10) - 1
        assert 6 <= k < 18, "outside the central half"
        assert 8 <= k < 14, "an empty slice was drawn"
        seen.add(k)
    assert len(seen) >= 3
    a, key = ds[(0, 1, 5)]
    b, _ = ds[(0, 1, 5)]
    others = [ds[(0, 1, i)][0] for i in range(6, 12)]
    assert key == (0, 1, 5) and a.shape == (1, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b) and not all(torch.equal(a, c) for c in others)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    # a fresh data set (empty cache, as in another worker) gives the same sample
    fresh = data.SliceDataset([aniso], seed=3, input_size=64)
    assert torch.equal(fresh[(0, 1, 5)][0], a)
    assert fresh.volume_cache.misses == 1 and fresh.cache.misses == 1  # volume, usable slices

    fresh[(0, 1, 7)]
    assert fresh.volume_cache.misses == 1, "the volume was read again"
    assert fresh.cache.misses == 1, "the usable slices were cut again"


def test_all_slices_reach_the_edges_of_the_head(tmp_path):
    # Content in slices 2..21 of 24: "central" keeps to 6..17, "all" reaches the top and bottom
    # (a whole-volume assessment reads those too) but never an empty slice.
    arr = np.zeros((24, 48, 48), np.float32)
    for k in range(2, 22):
        arr[k, 10:38, 12:36] = 10.0 * (k + 1)
    path = write_volume(tmp_path / "aniso.nii.gz", arr, spacing=(1.0, 1.0, 3.0))
    seen = {}
    for slices in data.SLICE_RANGES:
        ds = data.SliceDataset([path], seed=1, input_size=64, slices=slices)
        ks = set()
        for i in range(200):
            img, _ = ds.draw(data.sample_rng(1, 0, 0, i))
            ks.add(int(img.max() // 10) - 1)
        seen[slices] = ks
    assert seen["central"] <= set(range(6, 18))
    assert seen["all"] <= set(range(2, 22))
    assert min(seen["all"]) <= 3 and max(seen["all"]) >= 20
    with pytest.raises(InputError, match="slices"):
        data.SliceDataset([path], slices="middle")


def test_isotropic_volume_uses_all_three_orientations(tmp_path):
    iso = write_volume(tmp_path / "iso.nii.gz", head(np.random.default_rng(1), (32, 32, 32)))
    ds = data.SliceDataset([iso], seed=0, input_size=32)
    seen = {ds.draw(data.sample_rng(0, 0, 0, i))[1]["orientation"] for i in range(30)}
    assert seen == {"axial", "coronal", "sagittal"}


def test_unreadable_volume_reported_once_and_skipped(tmp_path, capsys):
    good = write_volume(tmp_path / "good.nii.gz", head(np.random.default_rng(2), (12, 32, 32)))
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    messages = []
    ok, infos = data.check_volumes([bad, good], report=messages.append)
    assert ok == [str(good)] and len(infos) == 1
    assert len(messages) == 1 and "broken.nii.gz" in messages[0]
    with pytest.raises(InputError, match="no usable"):
        data.check_volumes([bad], report=None)

    ds = data.SliceDataset([bad, good], seed=0, input_size=32)
    for i in range(12):  # bad is drawn about half of the time, reported only once
        img, _ = ds[(0, 0, i)]
        assert img.shape == (1, 32, 32)
    lines = capsys.readouterr().err.splitlines()
    assert sum("broken.nii.gz" in line for line in lines) == 1
    with pytest.raises(InputError, match="no usable volume"):
        data.SliceDataset([bad], input_size=32)[(0, 0, 0)]


# ----------------------------------------------------------------------------- corruption


def test_corrupt_batch_seeded_and_labels_are_ssim():
    from MotionSSIMLib.simulation import ssim

    rng = np.random.default_rng(0)
    clean = torch.zeros(6, 1, 48, 48)
    clean[:, :, 8:40, 10:38] = torch.from_numpy(rng.random((6, 1, 32, 28)).astype(np.float32))
    g = pipeline.batch_generator
    # the paper's corruption alone (no acquisition stages: those change the reference slice,
    # see test_pipeline's acquisition test)
    kw = dict(contrast=False, p_torchio=0.5, acquisition=False)
    c1, l1 = pipeline.corrupt_batch(clean, g(5, (0, 2, 100)), **kw)
    c2, l2 = pipeline.corrupt_batch(clean, g(5, (0, 2, 100)), **kw)
    c3, _ = pipeline.corrupt_batch(clean, g(5, (0, 2, 101)), **kw)
    assert torch.equal(c1, c2) and torch.equal(l1, l2) and not torch.equal(c1, c3)
    assert c1.shape == clean.shape and l1.shape == (6,)
    assert torch.allclose(l1, ssim.ssim_label(clean, c1), atol=1e-6)
    assert float(l1.min()) >= -1 and float(l1.max()) <= 1 and float(l1.min()) < 0.999
    # with contrast augmentation the label compares against the augmented clean slice
    c4, l4 = pipeline.corrupt_batch(clean, g(5, (0, 2, 100)), contrast=True, p_torchio=0.0,
                                    acquisition=False)
    assert not torch.allclose(l4, ssim.ssim_label(clean, c4), atol=1e-3)
    with pytest.raises(ValueError):
        pipeline.corrupt_batch(clean[:, 0], g(5, (0, 0, 0)))


def test_batch_keys_partition_resume_and_ranks():
    full = pipeline.batch_keys(0, 3, n=25, batch_size=10)
    assert [len(b) for b in full] == [10, 10, 5]
    assert [k[2] for b in full for k in b] == list(range(25))
    assert pipeline.batch_keys(0, 3, 25, 10, start_batch=1) == full[1:]
    ranks = [pipeline.batch_keys(0, 3, 25, 10, rank=r, world_size=2) for r in (0, 1)]
    for t in range(3):  # the two ranks together hold exactly global batch t
        assert sorted(ranks[0][t] + ranks[1][t]) == full[t]
    with pytest.raises(ValueError):
        pipeline.batch_keys(0, 0, 10, 1, world_size=2)


def test_worker_batches_equal_in_process_batches(tmp_path):
    vols = [write_volume(tmp_path / f"v{i}.nii.gz", head(np.random.default_rng(i), (12, 40, 40)),
                         spacing=(1, 1, 3)) for i in range(2)]
    ds = data.SliceDataset(vols, seed=1, input_size=40)
    keys = pipeline.batch_keys(0, 0, 8, 4)
    collate = pipeline.Collate(seed=1, contrast=True, p_torchio=0.5, corrupt=True)
    main = list(pipeline.make_loader(ds, keys, collate, workers=0))
    work = list(pipeline.make_loader(ds, keys, collate, workers=1))
    assert len(main) == 2
    for a, b in zip(main, work, strict=True):
        assert a["key"] == b["key"]
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    # the device path (clean slices from the loader, corruption afterwards) gives the same
    lazy = pipeline.Collate(seed=1, contrast=True, p_torchio=0.5, corrupt=False)
    for a, batch in zip(main, pipeline.make_loader(ds, keys, lazy), strict=True):
        images, labels = pipeline.to_device_batch(batch, "cpu", lazy)
        assert torch.equal(images, a["images"]) and torch.equal(labels, a["labels"])


def test_whole_volumes_never_evict_the_usable_slices(tmp_path):
    # Four anisotropic volumes whose usable slices fit the bound but whose slices and whole
    # volumes together do not: each volume is read once and its slices are cut once, however
    # many samples are drawn (sharing one bound, a volume read evicted slices: one re-read per
    # sample on a large data set).
    paths = []
    for v in range(4):
        arr = np.zeros((24, 48, 48), np.float32)
        arr[6:18, 10:38, 12:36] = 10.0 * (v + 1)
        paths.append(write_volume(tmp_path / f"v{v}.nii.gz", arr, spacing=(1.0, 1.0, 3.0)))
    slices_bytes = 12 * 48 * 48 * 4   # the usable slices of one volume (float32): half of it
    ds = data.SliceDataset(paths, seed=0, input_size=32, cache_bytes=int(8.5 * slices_bytes))
    for i in range(60):
        ds[(0, 0, i)]
    assert ds.cache.misses == 4, "usable slices were cut again"
    assert ds.volume_cache.misses == 4, "a volume was read again"
    assert ds.cache.nbytes <= ds.cache.max_bytes

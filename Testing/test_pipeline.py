"""corrupt_batch: drawn, then applied, and recorded (issue 10, point 3); TorchIO backends."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from MotionSSIMLib.imaging import intensity
from MotionSSIMLib.simulation import motion, pipeline, ssim


def _clean(n=8, size=64, seed=0):
    """Head-like slices: a bright ellipse with textured inside on a black background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    out = []
    for _ in range(n):
        r = (yy / rng.uniform(0.3, 0.4)) ** 2 + (xx / rng.uniform(0.25, 0.35)) ** 2
        img = np.where(r < 1, 0.6 + 0.3 * np.sin(25 * xx + rng.uniform(0, 6)) * np.cos(20 * yy), 0)
        out.append(img + 0.01 * rng.random((size, size)) * (r < 1))
    x = torch.tensor(np.stack(out), dtype=torch.float32)[:, None]
    return x / x.amax(dim=(2, 3), keepdim=True)


def test_recorded_parameters_replay_the_batch_exactly():
    clean = _clean()
    gen = pipeline.batch_generator(3, (0, 1, 40))
    images, labels, params = pipeline.corrupt_batch(clean, gen, contrast=True, p_torchio=0.5,
                                                    return_params=True)
    # the same draw with or without recording
    again = pipeline.corrupt_batch(clean, pipeline.batch_generator(3, (0, 1, 40)))
    assert len(again) == 2
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)
    # replaying the recorded parameters reproduces every sample exactly
    replay_images, replay_labels = pipeline.apply_corruption(clean, params)
    assert torch.equal(replay_images, images) and torch.equal(replay_labels, labels)
    # a few samples alone, from the record
    sub = [2, 5]
    few_images, few_labels = pipeline.apply_corruption(clean[sub], params.select(sub))
    torch.testing.assert_close(few_images, images[sub], atol=1e-5, rtol=0)
    torch.testing.assert_close(few_labels, labels[sub], atol=1e-4, rtol=0)
    # the record says what each sample went through, as JSON
    for i in range(len(clean)):
        d = json.loads(json.dumps(params.describe(i)))
        assert d["contrast"] in intensity.CONTRASTS
        assert d["simulator"] in ("torchio", "kspace")
        assert d["pe_axis"] in ("x", "y")
        assert d["severity"] == pytest.approx(float(params.motion.severity[i]))
        if d["severity"] == 0:
            assert labels[i] == pytest.approx(1.0, abs=1e-4)
    assert set(params.contrast_names) <= set(intensity.CONTRASTS)


def test_contrast_record_matches_the_intensity_draw():
    """The contrast part of the record is intensity.sample_contrast_batch's draw for that
    generator state, and applying it gives the label's reference slice."""
    clean = _clean(n=6, seed=4)
    _, labels, params = pipeline.corrupt_batch(clean, torch.Generator().manual_seed(8),
                                               return_params=True, acquisition=False)
    names, cparams = intensity.sample_contrast_batch(6, torch.Generator().manual_seed(8))
    assert names == params.contrast_names
    for key, value in cparams.items():
        assert torch.equal(value, params.contrast_params[key])
    reference = intensity.apply_contrast_batch(clean, names, cparams)
    corrupted = motion.apply_motion(reference, params.motion)
    assert torch.allclose(ssim.ssim_label(reference, corrupted), labels, atol=1e-6)
    # without contrast augmentation nothing is recorded for it
    _, _, plain = pipeline.corrupt_batch(clean, torch.Generator().manual_seed(8), contrast=False,
                                         return_params=True)
    assert plain.contrast_names is None and plain.describe(0)["contrast"] is None


def test_draw_order_is_deterministic_for_a_seed():
    a = pipeline.draw_corruption(16, (64, 64), pipeline.batch_generator(1, (0, 0, 0)))
    b = pipeline.draw_corruption(16, (64, 64), pipeline.batch_generator(1, (0, 0, 0)))
    c = pipeline.draw_corruption(16, (64, 64), pipeline.batch_generator(1, (0, 0, 16)))
    assert a.contrast_names == b.contrast_names
    for x, y in ((a.motion.severity, b.motion.severity), (a.motion.use_tio, b.motion.use_tio),
                 (a.motion.tio.times, b.motion.tio.times),
                 (a.motion.kspace.group_pose, b.motion.kspace.group_pose)):
        assert torch.equal(x, y)
    assert not torch.equal(a.motion.tio.degrees, c.motion.tio.degrees)
    # about P_CLEAN of the samples are motion-free, severity 0
    many = pipeline.draw_corruption(2000, (64, 64), torch.Generator().manual_seed(0))
    share = float((many.motion.severity == 0).float().mean())
    assert abs(share - pipeline.P_CLEAN) < 0.03


def test_torchio_backend_gives_the_same_batch():
    """tio_backend="torchio" runs the real TorchIO on the same recorded draw: same images and
    labels as the batched default, to float32 rounding. Without the acquisition stages: TorchIO
    splits the whole k-space, so it cannot move only the lines of a lower acquired matrix
    (refused, below)."""
    clean = _clean(n=6, seed=2)
    a_img, a_lab = pipeline.corrupt_batch(clean, torch.Generator().manual_seed(5), p_torchio=1.0,
                                          acquisition=False)
    b_img, b_lab = pipeline.corrupt_batch(clean, torch.Generator().manual_seed(5), p_torchio=1.0,
                                          tio_backend="torchio", acquisition=False)
    assert (a_img - b_img).abs().max() < 1e-5
    assert (a_lab - b_lab).abs().max() < 1e-4
    assert float(a_lab.min()) < 0.95
    collate = pipeline.Collate(seed=5, p_torchio=1.0, tio_backend="torchio", acquisition=False)
    out = collate([(clean[i], (0, 0, i)) for i in range(2)])
    ref = pipeline.corrupt_batch(clean[:2], pipeline.batch_generator(5, (0, 0, 0)), p_torchio=1.0,
                                 acquisition=False)
    assert (out["images"] - ref[0]).abs().max() < 1e-5
    from MotionSSIMLib.simulation import motion

    drawn = motion.draw_motion_params(6, (64, 64), torch.Generator().manual_seed(5), 1.0)
    with pytest.raises(ValueError, match="acquired band below 1 needs the torch backend"):
        motion.apply_motion(clean, drawn.acquired(torch.full((6, 2), 0.5)), "torchio")
    with pytest.raises(ValueError, match="tio_backend"):
        pipeline.corrupt_batch(clean, torch.Generator().manual_seed(5), tio_backend="simpleitk")


def test_apply_corruption_refuses_mismatched_batches():
    clean = _clean(n=4)
    params = pipeline.draw_corruption(3, (64, 64), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="parameters for 3"):
        pipeline.apply_corruption(clean, params)


def test_acquisition_stages_are_recorded_replayed_and_keep_clean_labels_at_one():
    """Resolution before motion and noise on the model input after the label: recorded,
    replayed exactly (a subset too: per-sample noise seeds), motion-free samples still read 1
    and the noise never moves a label."""
    clean = _clean(n=24, size=64, seed=5)
    gen = pipeline.batch_generator(4, (0, 2, 0))
    images, labels, params = pipeline.corrupt_batch(clean, gen, return_params=True)
    assert params.resolution is not None and params.noise is not None
    replay = pipeline.apply_corruption(clean, params)
    assert torch.equal(replay[0], images) and torch.equal(replay[1], labels)
    sub = [1, 7, 20]
    few_images, few_labels = pipeline.apply_corruption(clean[sub], params.select(sub))
    torch.testing.assert_close(few_images, images[sub], atol=1e-5, rtol=0)
    torch.testing.assert_close(few_labels, labels[sub], atol=1e-4, rtol=0)
    noisy = torch.isfinite(params.noise.snr)
    still = params.motion.severity == 0
    assert noisy.any() and (~noisy).any() and params.resolution.apply.any()
    for i in range(len(clean)):
        d = json.loads(json.dumps(params.describe(i)))
        assert ("noise_snr" in d) and ("resolution" in d)
        if still[i]:
            assert labels[i] == pytest.approx(1.0, abs=1e-4), "noise alone lowered the label"
    # noise is really in the model input: a noisy sample's background is not black
    i = int(torch.nonzero(noisy & (params.noise.snr < 10)).flatten()[0])
    assert float(images[i, 0, :4, :4].mean()) > 0.01
    # the label is taken before the noise: the same draws without noise give the same labels
    # (after a shared noise field they rose by 0.15 on average), and only the input changes
    quiet_images, quiet_labels = pipeline.apply_corruption(
        clean, dataclasses.replace(params, noise=None))
    assert torch.equal(quiet_labels, labels), "the noise moved a label"
    assert not torch.equal(quiet_images[noisy], images[noisy])
    assert torch.equal(quiet_images[~noisy], images[~noisy])
    # without the stages: the paper's corruption, nothing recorded for them
    plain = pipeline.corrupt_batch(clean, pipeline.batch_generator(4, (0, 2, 0)),
                                   return_params=True, acquisition=False)[2]
    assert plain.resolution is None and plain.noise is None
    assert torch.equal(plain.motion.severity, params.motion.severity), "same earlier draws"


def test_the_model_input_is_fitted_from_the_corrupted_slices_own_window(monkeypatch):
    """With the acquisition stages the last step fits each corrupted slice to the model input
    the way inference does (`geometry.to_model_input` on the corrupted slice alone), so the
    model trains on the input the product gives it (model v3, phase 6)."""
    from MotionSSIMLib.imaging import geometry

    clean = _clean(n=6, size=96, seed=4)
    gen = lambda: pipeline.batch_generator(5, (0, 0, 0))  # noqa: E731
    images, labels = pipeline.corrupt_batch(clean, gen(), contrast=False, acquisition=True,
                                            storage=0.5)
    # the same batch without the last step: the corrupted slices in the clean slice's frame
    monkeypatch.setattr(pipeline, "fit_as_inference", lambda x: x)
    framed, same_labels = pipeline.corrupt_batch(clean, gen(), contrast=False, acquisition=True,
                                                 storage=0.5)
    assert torch.equal(labels, same_labels)  # the label is the acquired pair's, untouched
    expected = geometry.to_model_input(framed[:, 0].numpy(), size=96)
    assert np.allclose(images[:, 0].numpy(), expected, atol=1e-6)
    assert not torch.allclose(images, framed, atol=1e-3)
    # the paper's corruption alone (no acquisition stages) is left as it was
    monkeypatch.undo()
    plain, _ = pipeline.corrupt_batch(clean, gen(), contrast=False, acquisition=False)
    monkeypatch.setattr(pipeline, "fit_as_inference", lambda x: x / 0)
    plain2, _ = pipeline.corrupt_batch(clean, gen(), contrast=False, acquisition=False)
    assert torch.equal(plain, plain2)


def test_ghosts_on_a_zero_background_move_the_window_that_inference_cuts():
    """Why the stage exists: on a slice whose background is exactly zero (noise-free, masked),
    the ghosts of strong motion lower the head threshold and widen the head box, so inference
    cuts a larger window than the clean slice's and the head shrinks in the model input."""
    from MotionSSIMLib.imaging import geometry
    from MotionSSIMLib.simulation import kspace_motion

    clean = _clean(n=4, size=128, seed=1)
    windows = geometry.model_windows(clean[:, 0].numpy())
    moved = kspace_motion.kspace_motion(clean, torch.full((4,), 0.9), torch.Generator().manual_seed(0))
    ghosted = geometry.model_windows(moved[:, 0].numpy())
    side = lambda w: w[1] - w[0]  # noqa: E731
    assert np.mean([side(g) / side(w) for g, w in zip(ghosted, windows)]) > 1.1
    fitted = pipeline.fit_as_inference(moved)
    assert fitted.shape == moved.shape and float(fitted.min()) >= 0 and float(fitted.max()) <= 1
    assert np.allclose(fitted[:, 0].numpy(), geometry.to_model_input(moved[:, 0].numpy(), size=128))


def test_collate_and_fixed_sets_take_the_runs_motion_free_share():
    """--p-clean reaches every corrupted batch of a run (training, validation, calibration):
    every label 1 (to float rounding) at 1, hardly any at 0; the default is settings.P_CLEAN."""
    from MotionSSIMLib.base import settings

    assert pipeline.P_CLEAN == settings.P_CLEAN == pipeline.Collate(0).p_clean
    clean = _clean(n=32, size=48)
    items = [(clean[i], (0, 0, i)) for i in range(len(clean))]
    all_clean = pipeline.Collate(3, p_clean=1.0)(items)["labels"]
    assert torch.all(all_clean > 0.999), all_clean.min()
    moved = pipeline.Collate(3, p_clean=0.0)(items)["labels"]
    assert float((moved > 0.999).float().mean()) < 0.1, moved
    # the GPU path (corrupted on the device from the clean batch) follows it too
    lazy = pipeline.Collate(3, p_clean=1.0, corrupt=False)
    _, labels = pipeline.to_device_batch(lazy(items), "cpu", lazy)
    assert torch.all(labels > 0.999)

    class Keyed(torch.utils.data.Dataset):  # a SliceDataset stand-in: key -> (slice, key)
        def __getitem__(self, key):
            return clean[key[2] % len(clean)], key

    fixed = list(pipeline.fixed_set(Keyed(), 1, 16, 0, True, 0.5, chunk=8, p_clean=1.0))
    assert len(fixed) == 2 and all(torch.all(y > 0.999) for _, y in fixed)


def test_noise_options_reach_every_batch_of_a_run_and_leave_the_labels():
    """--array-noise and --band-noise reach the worker path, the device path and the fixed
    sets; they change the noise only: labels are taken before it, and their draws come after
    the motion's and the acquired matrix's, so the labels stay those of the default stream."""
    clean = _clean(n=16, size=48)
    items = [(clean[i], (0, 0, i)) for i in range(len(clean))]
    kw = dict(array_noise=1.0, band_noise=1.0, storage=0.5)
    plain = pipeline.Collate(3, storage=0.5)(items)
    noisy = pipeline.Collate(3, **kw)(items)
    torch.testing.assert_close(noisy["labels"], plain["labels"])
    assert not torch.equal(noisy["images"], plain["images"])
    again = pipeline.Collate(3, **kw)(items)
    assert torch.equal(again["images"], noisy["images"])
    lazy = pipeline.Collate(3, corrupt=False, **kw)
    images, labels = pipeline.to_device_batch(lazy(items), "cpu", lazy)
    assert torch.equal(images, noisy["images"]) and torch.equal(labels, noisy["labels"])
    _, _, params = pipeline.corrupt_batch(clean, pipeline.batch_generator(3, (0, 0, 0)),
                                          return_params=True, **kw)
    described = [params.describe(i) for i in range(len(clean))]
    noisy_ones = [d for d in described if d["noise_snr"] is not None]
    assert noisy_ones and all(d["noise_coils"] > 1 for d in noisy_ones)
    assert all(d["noise_acquired_grain"] for d in noisy_ones)
    json.dumps(described)

    class Keyed(torch.utils.data.Dataset):
        def __getitem__(self, key):
            return clean[key[2] % len(clean)], key

    fixed = list(pipeline.fixed_set(Keyed(), 1, 8, 0, True, 0.5, chunk=8, **kw))
    default = list(pipeline.fixed_set(Keyed(), 1, 8, 0, True, 0.5, chunk=8, storage=0.5))
    torch.testing.assert_close(fixed[0][1], default[0][1])
    assert not torch.equal(fixed[0][0], default[0][0])

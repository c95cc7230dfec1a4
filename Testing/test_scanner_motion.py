"""The motion families of issue 22 (scanner_motion): seeded, batched, recorded, centre kept,
severity 0 = the input, SSIM falling with severity, artefacts no rigid move explains; and the
family registry in draw_motion_params / corrupt_batch (the default draws as before)."""

import dataclasses
import json

import pytest
import torch
from test_motion import _best_rigid_ssim, _heads

from MotionSSIMLib.base.settings import MOTION_FAMILIES
from MotionSSIMLib.simulation import motion as M
from MotionSSIMLib.simulation import pipeline
from MotionSSIMLib.simulation import scanner_motion as S
from MotionSSIMLib.simulation.ssim import ssim_label

NEW = list(S.FAMILY_SIMULATORS)


def _run(x, family, severity, seed=0):
    return M.random_motion_batch(x, torch.Generator().manual_seed(seed), families=family,
                                 severity=severity, return_params=True)


@pytest.mark.parametrize("family", NEW)
def test_family_is_seeded_batched_and_recorded(family):
    x = _heads(n=5, size=64, seed=1)[..., :56]  # non-square too
    a, params = _run(x, family, 0.7, seed=3)
    b, _ = _run(x, family, 0.7, seed=3)
    c, _ = _run(x, family, 0.7, seed=4)
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert a.min() >= 0 and a.max() <= 1 and a.amax(dim=(1, 2, 3)).min() == 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (params.family == MOTION_FAMILIES.index(family)).all()
    # replaying a subset gives those samples; the record is JSON and names the family
    sub = torch.tensor([0, 3])
    torch.testing.assert_close(M.apply_motion(x[sub], params.select(sub)), a[sub],
                               atol=1e-5, rtol=0)
    for i in range(5):
        d = json.loads(json.dumps(params.describe(i)))
        assert d["simulator"] == family and d["pe_axis"] in ("x", "y")
        assert d["severity"] == pytest.approx(0.7)
    # both phase-encoding axes are drawn
    many = S.FAMILY_SIMULATORS[family][0](200, 0.5, (64, 64), torch.Generator().manual_seed(0))
    assert 60 < int(many.pe_rows.sum()) < 140


@pytest.mark.parametrize("family", NEW)
def test_severity_zero_returns_the_input(family):
    x = _heads(n=3, size=64, seed=2)
    y, _ = _run(x, family, torch.tensor([0.0, 0.0, 0.6]))
    assert torch.equal(y[:2], x[:2] / x[:2].amax(dim=(2, 3), keepdim=True))
    assert torch.allclose(ssim_label(x[:2], y[:2]), torch.ones(2), atol=1e-4)
    assert ssim_label(x[2:], y[2:]).item() < 0.99


@pytest.mark.parametrize("family", NEW)
def test_ssim_falls_with_severity_on_average(family):
    """Same draws (seed) at each severity, the mean over a small batch of head-like slices."""
    x = _heads(n=6, size=96, seed=5)
    means = [ssim_label(x, _run(x, family, s, seed=7)[0]).mean().item()
             for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert means[0] > 0.999
    assert all(later <= earlier + 0.02 for earlier, later in zip(means[:-1], means[1:],
                                                                  strict=True)), means
    assert means[-1] < 0.85 and means[1] - means[-1] > 0.05, means


@pytest.mark.parametrize("family", NEW)
def test_output_is_not_a_rigid_copy_and_the_head_stays(family):
    """Ghosts in the background that no small rigid move of the clean slice explains; the
    background stays dark (magnitude image); the k-space centre comes from the reference pose,
    so the head does not move (centre of mass within 2 px; DESIGN.md pitfall 3)."""
    clean = _heads(n=1, seed=3)
    for seed in (5, 6):
        moved, _ = _run(clean, family, 0.8, seed=seed)
        label = ssim_label(clean, moved).item()
        assert label < 0.95
        assert _best_rigid_ssim(clean, moved) < min(0.95, label + 0.1)
        background = clean[0, 0] < 0.05
        assert moved[0, 0][background].mean() > 2 * clean[0, 0][background].mean()
        assert moved[0, 0][background].median() < 0.2
    x = _heads(n=4, size=96, seed=4)
    y, _ = _run(x, family, 1.0, seed=2)
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")

    def com(t):
        w = t[:, 0] / t[:, 0].sum(dim=(1, 2), keepdim=True)
        return torch.stack([(w * yy).sum(dim=(1, 2)), (w * xx).sum(dim=(1, 2))], dim=1)

    assert (com(y) - com(x)).abs().max() < 2.0


def test_epi_nyquist_ghost_sits_half_a_field_away():
    """Single-shot EPI with a constant odd/even phase mismatch only: the ghost is the slice
    shifted by N/2 along the phase-encoding axis, |sin(phi/2)| of its size."""
    x = _heads(n=2, size=64, seed=8)
    p = S.draw_epi_params(2, 1.0, (64, 64), torch.Generator().manual_seed(0))
    p = dataclasses.replace(p, pe_rows=torch.tensor([True, False]), shots=torch.ones(2).long(),
                            nyquist=torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
                            shot_pose=torch.zeros_like(p.shot_pose))
    y = S.apply_epi(x, p)
    for i, dim in ((0, -2), (1, -1)):
        ghost = torch.roll(x[i, 0], 32, dims=dim) > 0.3
        outside = x[i, 0] < 0.02
        region = ghost & outside  # background here, head in the ghost
        ratio = y[i, 0][region].mean() / y[i, 0][x[i, 0] > 0.3].mean()
        assert 0.3 < ratio.item() / (abs(torch.sin(torch.tensor(0.5))).item()
                                     / torch.cos(torch.tensor(0.5)).item()) < 1.6


def test_through_plane_reference_segment_is_the_slice_in_its_plane():
    """A through-plane draw with no share of the neighbour, no signal loss and no in-plane
    pose returns the slice; the neighbour alone changes it."""
    x = _heads(n=2, size=64, seed=9)
    p = S.draw_through_plane_params(2, 1.0, (64, 64), torch.Generator().manual_seed(1))
    still = dataclasses.replace(p, mix=torch.zeros_like(p.mix), gain=torch.ones_like(p.gain),
                                poses=torch.zeros_like(p.poses))
    assert torch.allclose(S.apply_through_plane(x, still), x / x.amax(dim=(2, 3), keepdim=True),
                          atol=1e-5)
    mixed = dataclasses.replace(still, mix=torch.full_like(p.mix, 0.8))
    assert ssim_label(x, S.apply_through_plane(x, mixed)).max() < 0.97


def test_orderings_time_their_lines():
    """Line times in FFT order: linear from k = -N/2, centric from k = 0 outwards, interleaved
    / multi-shot: shot j holds every S-th line from j."""
    n = 8
    order = torch.tensor([0, 1, 2])
    t = S._line_times(order, torch.tensor([1, 1, 2]), n)
    k = S._k(n)  # 0, 1, 2, 3, -4, -3, -2, -1
    assert k.tolist() == [0, 1, 2, 3, -4, -3, -2, -1]
    assert t[0].argsort().tolist() == [4, 5, 6, 7, 0, 1, 2, 3]  # linear: k = -4 first
    assert t[1].argsort()[:3].tolist() == [0, 1, 7]  # centric: 0, +1, -1
    first_pass = set(torch.nonzero(t[2] < 0.5).flatten().tolist())
    assert first_pass == {4, 6, 0, 2}  # k = -4, -2, 0, 2: every other line
    seg = S._segments(t[2:], torch.tensor([2]))
    assert seg[0].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_default_families_draw_as_before_and_weights_pick():
    """No families given: the pick is u < p_torchio on the first draw, nothing else is drawn
    (the stream after the motion is unchanged); with weights, each family gets its share and
    a family of weight 0 never appears."""
    g = torch.Generator().manual_seed(3)
    u = torch.rand(500, generator=torch.Generator().manual_seed(3))
    p = M.draw_motion_params(500, (32, 32), g, p_torchio=0.3)
    assert torch.equal(p.use_tio, u < 0.3) and p.extra == {}
    assert set(p.family.unique().tolist()) == {0, 1}
    q = M.draw_motion_params(4000, (32, 32), torch.Generator().manual_seed(1),
                             families="torchio:1,epi:2,moves:1")
    counts = torch.bincount(q.family, minlength=len(MOTION_FAMILIES)).float() / 4000
    assert set(q.extra) == {"epi", "moves"}
    for name, share in (("torchio", 0.25), ("epi", 0.5), ("moves", 0.25), ("kspace", 0.0),
                        ("trajectory", 0.0)):
        assert abs(counts[MOTION_FAMILIES.index(name)].item() - share) < 0.03, name
    only = M.draw_motion_params(50, (32, 32), torch.Generator().manual_seed(1), families="epi")
    assert (only.family == MOTION_FAMILIES.index("epi")).all()


def test_corrupt_batch_with_all_families_replays_and_records():
    x = _heads(n=14, size=64, seed=11)
    gen = pipeline.batch_generator(2, (0, 0, 0))
    images, labels, params = pipeline.corrupt_batch(x, gen, families="all", return_params=True)
    again = pipeline.corrupt_batch(x, pipeline.batch_generator(2, (0, 0, 0)), families="all")
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)
    replay_images, replay_labels = pipeline.apply_corruption(x, params)
    assert torch.equal(replay_images, images) and torch.equal(replay_labels, labels)
    names = {params.describe(i)["simulator"] for i in range(14)}
    assert len(names) >= 4 and names <= set(MOTION_FAMILIES)
    collate = pipeline.Collate(seed=2, families="all")
    out = collate([(x[i], (0, 0, i)) for i in range(3)])
    ref = pipeline.corrupt_batch(x[:3], pipeline.batch_generator(2, (0, 0, 0)), families="all")
    assert torch.equal(out["images"], ref[0]) and torch.equal(out["labels"], ref[1])

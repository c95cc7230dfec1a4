"""Slices by anatomy, display orientation as Slicer shows it, and the model-input fit."""

import numpy as np
import pytest
import slicer
import vtk
from scipy.spatial.transform import Rotation

from MotionSSIMLib.base.errors import InputError
from MotionSSIMLib.imaging import geometry


def _slicer_screen_axes(orientation: str) -> tuple[np.ndarray, np.ndarray]:
    """(column direction, row-down direction) in RAS of Slicer's default view of a plane."""
    m = vtk.vtkMatrix3x3()
    getattr(slicer.vtkMRMLSliceNode, f"Get{orientation.capitalize()}SliceToRASMatrix")(m)
    col = np.array([m.GetElement(r, 0) for r in range(3)])
    up = np.array([m.GetElement(r, 1) for r in range(3)])
    return col, -up


def _coordinate_volume(directions: np.ndarray, spacing=(1.0, 1.2, 0.9), shape_kji=(20, 24, 28)):
    """A volume whose voxel values don't matter; we track voxels through their RAS positions."""
    arr = np.random.default_rng(0).random(shape_kji).astype(np.float32)
    return geometry.volume(arr, spacing, directions, origin=(-10.0, 5.0, 30.0))


def _ras_of_pixels(vol: geometry.Volume, orientation: str):
    """RAS position of every pixel of slice 0, by extracting an index volume the same way."""
    k, j, i = np.meshgrid(*[np.arange(s) for s in vol.array.shape], indexing="ij")
    coords = []
    for c in (i, j, k):
        v = geometry.Volume(c.astype(np.float32), vol.spacing, vol.directions, vol.origin)
        coords.append(geometry.extract_slices(v, orientation).images[3])
    ijk = np.stack([c.ravel() for c in coords], axis=1)
    ras = (vol.ijk_to_ras() @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    return ras.reshape(coords[0].shape + (3,))


OBLIQUE = Rotation.from_euler("xyz", [8, -6, 10], degrees=True).as_matrix()
PERMUTED = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i=-A... LPS-like mix


@pytest.mark.parametrize("directions", [np.eye(3), PERMUTED, PERMUTED @ OBLIQUE],
                         ids=["identity", "permuted-flipped", "permuted-oblique"])
@pytest.mark.parametrize("orientation", geometry.ORIENTATIONS)
def test_display_orientation_matches_slicer_views(directions, orientation):
    vol = _coordinate_volume(directions)
    ras = _ras_of_pixels(vol, orientation)
    col, row_down = _slicer_screen_axes(orientation)
    step_col = (ras[:, 1:] - ras[:, :-1]).mean(axis=(0, 1))
    step_row = (ras[1:, :] - ras[:-1, :]).mean(axis=(0, 1))
    # moving right on screen goes along Slicer's column direction, down along its row-down one
    assert step_col @ col > 0.9 * np.linalg.norm(step_col)
    assert step_row @ row_down > 0.9 * np.linalg.norm(step_row)
    # the slice is (nearly) normal to the anatomical axis of the plane
    normal = {"sagittal": 0, "coronal": 1, "axial": 2}[orientation]
    assert np.ptp(ras[..., normal]) < 0.5 * min(np.ptp(ras[..., a]) for a in range(3) if a != normal)


def _slicer_reslice(path, orientation: str, position_mm: float, shape_hw, zoom: int = 4):
    """The slice Slicer's Red view would show: vtkMRMLSliceLogic reslicing the volume file
    loaded as Slicer loads it, in a view of zoom x the slice's pixels fitted to the volume,
    then averaged back to one value per slice pixel (rows top to bottom)."""
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    volumes_logic = slicer.vtkSlicerVolumesLogic()
    volumes_logic.SetMRMLScene(scene)
    node = volumes_logic.AddArchetypeVolume(str(path), "volume", 0)
    slice_node = slicer.vtkMRMLSliceNode()
    slice_node.SetLayoutName("Red")
    scene.AddNode(slice_node)
    preset = vtk.vtkMatrix3x3()
    getattr(slicer.vtkMRMLSliceNode, f"Get{orientation.capitalize()}SliceToRASMatrix")(preset)
    slice_to_ras = slice_node.GetSliceToRAS()
    for r in range(3):
        for c in range(3):
            slice_to_ras.SetElement(r, c, preset.GetElement(r, c))
    slice_node.UpdateMatrices()
    composite = slicer.vtkMRMLSliceCompositeNode()
    composite.SetLayoutName("Red")
    scene.AddNode(composite)
    composite.SetBackgroundVolumeID(node.GetID())
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLScene(scene)
    logic.SetSliceNode(slice_node)
    h, w = shape_hw
    slice_node.SetDimensions(w * zoom, h * zoom, 1)
    logic.FitSliceToAll()
    # the offset runs along the view's normal, which may point against the anatomical axis
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[orientation]
    logic.SetSliceOffset(float(position_mm) * preset.GetElement(axis, 2))
    layer = logic.GetBackgroundLayer()
    layer.SetVolumeNode(node)
    logic.UpdatePipeline()
    reslice = layer.GetReslice()
    reslice.Update()
    image = reslice.GetOutput()
    nx, ny, _ = image.GetDimensions()
    a = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(ny, nx, -1)[..., 0]
    scene.Clear(1)
    return a[::-1].reshape(h, zoom, w, zoom).mean(axis=(1, 3))  # VTK rows go up


@pytest.mark.parametrize("directions", [np.eye(3), PERMUTED], ids=["identity", "permuted-flipped"])
@pytest.mark.parametrize("orientation", geometry.ORIENTATIONS)
def test_slices_are_what_slicer_shows(tmp_path, directions, orientation):
    # Blocks at distinct places and a ramp along every axis, so that any flip shows.
    import nibabel as nib

    from MotionSSIMLib.imaging import io

    k, j, i = np.meshgrid(np.arange(20), np.arange(40), np.arange(60), indexing="ij")
    arr = (i / 60 + 2 * j / 40 + 3 * k / 20).astype(np.float32)  # [k, j, i]
    arr[:, 5:30, 10:25] = 1.0
    arr[:, 8:12, 40:55] = 2.0
    arr[3:8, 20:36, :] += 0.5
    arr[12:16, :, 30:38] += 0.8
    affine = np.eye(4)
    affine[:3, :3] = directions
    affine[:3, 3] = (10.0, -20.0, 5.0)
    path = tmp_path / "blocks.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(arr, (2, 1, 0)), affine), path)
    stack = geometry.extract_slices(io.read_volume(path), orientation)
    for n in (len(stack.images) // 3, len(stack.images) // 2 + 1):
        ours = stack.images[n]
        shown = _slicer_reslice(path, orientation, stack.positions_mm[n], ours.shape)

        def corr(a, b):
            return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

        same = corr(ours, shown)
        assert same > 0.95, f"slice {n}: correlation {same:.3f} with Slicer's view"
        for name, other in (("upside down", ours[::-1]), ("mirrored", ours[:, ::-1]),
                            ("rotated", ours[::-1, ::-1])):
            assert corr(other, shown) < same - 0.1, f"slice {n} matches Slicer {name}"


def test_positions_and_spacing_follow_geometry():
    vol = _coordinate_volume(PERMUTED)
    stack = geometry.extract_slices(vol, "axial")
    # PERMUTED: S is along +j, so axial slices run along j with 1.2 mm steps
    assert stack.axis == "j"
    assert np.allclose(np.diff(stack.positions_mm), 1.2)
    assert stack.positions_mm[0] == pytest.approx(vol.origin[2])
    assert len(stack.images) == vol.array.shape[1]
    assert sorted(stack.pixel_spacing) == [0.9, 1.0]


def test_auto_picks_acquisition_plane():
    arr = np.ones((10, 40, 40), np.float32)
    assert geometry.resolve_orientation(geometry.volume(arr, (1, 1, 5)), "auto") == "axial"
    # thick slices along k, k pointing anterior -> coronal acquisition
    d = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    assert geometry.resolve_orientation(geometry.volume(arr, (0.9, 0.9, 4), d), "auto") == "coronal"
    d = np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]])
    assert geometry.resolve_orientation(geometry.volume(arr, (0.9, 0.9, 4), d), "auto") == "sagittal"
    # isotropic (or mildly anisotropic) -> axial
    assert geometry.resolve_orientation(geometry.volume(arr, (1, 1, 1.4), d), "auto") == "axial"
    stack = geometry.extract_slices(geometry.volume(arr, (0.9, 0.9, 4), d), "auto")
    assert stack.orientation == "sagittal" and stack.axis == "k"


def test_foreground_flags_empty_edge_slices():
    rng = np.random.default_rng(1)
    arr = rng.normal(5, 2, (30, 64, 64)).clip(0)  # noise background
    arr[5:25, 12:52, 12:52] += 400 + 50 * rng.random((20, 40, 40))
    stack = geometry.extract_slices(geometry.volume(arr), "axial")
    assert stack.foreground[:5].max() < 0.01
    assert stack.foreground[5:25].min() > 0.3


def test_model_input_pad_downscale_square_and_passthrough():
    # the fit alone (crop=False); the head crop before it is tested in test_fov.py
    rng = np.random.default_rng(2)
    small = rng.random((2, 100, 180)) * 1000 - 50
    out = geometry.to_model_input(small, crop=False)
    assert out.shape == (2, 256, 256) and out.dtype == np.float32
    assert out.min() == 0 and out.max() == 1
    # scaled up (model v3: UPSCALE_WINDOW) so the longer side fills 256: 100 x 180 -> 142 x 256,
    # then padded centred along the shorter side
    assert np.all(out[:, :57] == 0) and np.all(out[:, 199:] == 0)
    assert np.all(out[:, 60:196].std(axis=1) > 0.05)  # every column holds the image
    big = rng.random((1, 512, 300))
    out = geometry.to_model_input(big, crop=False)
    assert out.shape == (1, 256, 256)
    assert np.all(out[0, :, :53] == 0) and out[0, :, 60:190].std() < big.std()  # anti-aliased
    # 100 x 50 pixels of 1 x 2 mm -> 100 x 100 square pixels
    rect = np.zeros((1, 100, 50))
    rect[0, :, 25:] = 1
    out = geometry.to_model_input(rect, pixel_spacing=(1.0, 2.0), crop=False)
    assert np.count_nonzero(out[0, 128] > 0.5) in range(125, 132)  # then scaled up to 256
    ready = rng.random((3, 256, 256)).astype(np.float32)
    ready = (ready - ready.min(axis=(1, 2), keepdims=True))
    ready /= ready.max(axis=(1, 2), keepdims=True)
    assert np.array_equal(geometry.to_model_input(ready, crop=False), ready)
    # a constant slice gives zeros, never NaN
    assert not np.isnan(geometry.to_model_input(np.full((40, 40), 7.0))).any()


def test_volume_validation():
    with pytest.raises(InputError, match="3D"):
        geometry.volume(np.zeros((2, 3, 4, 5)))
    with pytest.raises(InputError, match="spacing"):
        geometry.volume(np.zeros((2, 3, 4)), spacing=(1, 0, 1))
    with pytest.raises(InputError, match="direction"):
        geometry.volume(np.zeros((2, 3, 4)), directions=np.zeros((3, 3)))


def test_from_lps_converts_to_ras():
    vol = geometry.Volume.from_lps(np.zeros((2, 3, 4)), (1, 1, 1), np.eye(3).ravel(), (10, 20, 30))
    assert np.allclose(vol.directions, np.diag([-1, -1, 1]))
    assert vol.origin == (-10.0, -20.0, 30.0)


def test_noise_only_edge_slices_are_empty_at_low_snr():
    # Rayleigh background (magnitude MR) at SNR ~8, with a bias-darkened head in the middle
    rng = np.random.default_rng(4)
    sigma = 10.0
    noise = np.hypot(rng.normal(0, sigma, (24, 80, 80)), rng.normal(0, sigma, (24, 80, 80)))
    arr = noise.copy()
    yy = np.linspace(0.6, 1.0, 60)[None, :, None]  # bias field across the head
    arr[6:18, 10:70, 10:70] = 80 * yy + np.hypot(rng.normal(0, sigma, (12, 60, 60)),
                                                rng.normal(0, sigma, (12, 60, 60)))
    stack = geometry.extract_slices(geometry.volume(arr), "axial")
    assert stack.foreground[:6].max() < 0.02 and stack.foreground[18:].max() < 0.02
    assert stack.foreground[6:18].min() > 0.5

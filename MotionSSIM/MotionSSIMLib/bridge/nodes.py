"""MRML nodes as the engine sees them: a volume node's voxels and geometry, points through
its parent transform, and the result nodes found again through node references.

The Slicer bridge (this wing) uses MRML classes, ``slicer.util`` array helpers and vtk only (no
qt, no ``slicer.app``), so it runs inside Slicer, in ``PythonSlicer`` and in pytest with the
``slicer-core`` wheel (set ``slicer.mrmlScene`` first). Views (layouts, slice annotations)
stay in the module widget; the bridge only computes what they show.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from ..base.errors import InputError

ROLE_ATTRIBUTE = "MotionSSIM.Role"
SOURCE_ATTRIBUTE = "MotionSSIM.SourceVolumeID"
AXIS_ATTRIBUTE = "MotionSSIM.Axis"
ORIENTATION_ATTRIBUTE = "MotionSSIM.Orientation"
SUMMARY_ATTRIBUTE = "MotionSSIM.Summary"
THRESHOLDS_ATTRIBUTE = "MotionSSIM.Thresholds"

AXES = ("i", "j", "k")


# --------------------------------------------------------------------------- geometry


def _scene():
    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise RuntimeError("slicer.mrmlScene is not set")
    return scene


def ijk_to_ras_array(volumeNode) -> np.ndarray:
    """The node's 4x4 IJK-to-RAS matrix (local coordinates, parent transforms not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_from_node(volumeNode):
    """A copy of a scalar volume node's voxels with its real geometry, as an engine Volume.

    The array keeps Slicer's [k, j, i] order; spacing, directions and origin come from the
    node's IJK-to-RAS matrix (so oblique and anisotropic volumes keep their geometry).
    """
    from ..imaging.geometry import Volume

    if volumeNode is None:
        raise InputError("no input volume: select a volume")
    name = volumeNode.GetName()
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{name}: not a scalar (grey-value) volume: {volumeNode.GetClassName()}")
    if volumeNode.GetImageData() is None:
        raise InputError(f"{name}: the volume has no voxels")
    array = np.array(slicer.util.arrayFromVolume(volumeNode), copy=True)
    if array.ndim != 3:
        raise InputError(f"{name}: expected a 3D scalar volume, got array shape {array.shape}")
    matrix = ijk_to_ras_array(volumeNode)
    columns = matrix[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"{name}: degenerate IJK-to-RAS matrix (zero spacing)")
    directions = columns / spacing
    return Volume(
        array=array,
        spacing=tuple(float(s) for s in spacing),
        directions=directions,
        origin=tuple(float(o) for o in matrix[:3, 3]),
    )


def _transform_point(volumeNode, point, to_world: bool) -> np.ndarray:
    """Map a RAS point through the volume's parent transform (local -> world, or back)."""
    parent = volumeNode.GetParentTransformNode()
    if parent is None:
        return np.asarray(point, dtype=float)
    transform = vtk.vtkGeneralTransform()
    if to_world:
        parent.GetTransformToWorld(transform)
    else:
        parent.GetTransformFromWorld(transform)
    return np.asarray(transform.TransformPoint([float(v) for v in point]), dtype=float)


def _local_to_world(volumeNode, point) -> np.ndarray:
    return _transform_point(volumeNode, point, to_world=True)


def _world_to_local(volumeNode, point) -> np.ndarray:
    return _transform_point(volumeNode, point, to_world=False)


def slice_center_ras(volumeNode, axis: str, index: int, world: bool = True) -> np.ndarray:
    """RAS point at the centre of voxel slice `index` cut through voxel axis `axis`."""
    dims = volumeNode.GetImageData().GetDimensions()  # (I, J, K)
    ijk = [(d - 1) / 2.0 for d in dims]
    ijk[AXES.index(axis)] = float(index)
    ras = ijk_to_ras_array(volumeNode) @ np.array([*ijk, 1.0])
    return _local_to_world(volumeNode, ras[:3]) if world else ras[:3]


# --------------------------------------------------------------------------- node bookkeeping


def _referenced(volumeNode, role: str, className: str):
    node = volumeNode.GetNodeReference(role)
    if node is not None and node.IsA(className) and node.GetScene() is not None:
        return node
    return None


def _get_or_create(volumeNode, role: str, className: str, name: str, tag: str):
    """The node `volumeNode` references under `role`, created (and referenced) if missing."""
    node = _referenced(volumeNode, role, className)
    if node is None:
        node = _scene().AddNewNodeByClass(className, name)
        volumeNode.SetNodeReferenceID(role, node.GetID())
    node.SetName(name)
    node.SetAttribute(ROLE_ATTRIBUTE, tag)
    node.SetAttribute(SOURCE_ATTRIBUTE, volumeNode.GetID())
    return node

"""Assess a volume node or a sequence node and write the results into the scene: at once
(`assess_volume_node`, `assess_sequence_node`) or beside the GUI (`AssessmentJob`,
`SeriesAssessmentJob`: the voxels copied on the main thread, the engine run by a `jobs`
runner, the results written on the main thread once it is done).
"""

from __future__ import annotations

from collections.abc import Callable

import slicer

from ..base.errors import InputError
from .nodes import _scene, volume_from_node
from .series_results import (
    SeriesSceneResult,
    find_browser,
    read_series_source,
    write_series_assessment,
)
from .volume_results import SceneResult, write_assessment


def validate_settings(volumeNode, good: float = 0.85, sufficient: float = 0.60) -> list[str]:
    """What stops an assessment with these settings (empty list = ready). The panel shows the
    first problem on the disabled Apply button, before anything runs."""
    problems = []
    if volumeNode is None:
        problems.append("Select an input volume")
    elif volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        problems.append(f"{volumeNode.GetName()} is a labelmap (segmentation), not an MR image: "
                        "select a scalar volume")
    elif not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        problems.append(f"{volumeNode.GetName()} is not a scalar volume")
    elif volumeNode.GetImageData() is None:
        problems.append(f"{volumeNode.GetName()} has no voxels")
    if not (0.0 <= float(sufficient) < float(good) <= 1.0):
        problems.append(f"thresholds: 'sufficient' ({float(sufficient):.2f}) must be below "
                        f"'good' ({float(good):.2f}), both in [0, 1]")
    return problems


def _record_device(assessment, device) -> None:
    """The device the assessment ran on ('auto' resolved), kept in the summary (table, JSON)."""
    assessment.summary["device"] = str(device)


class AssessmentJob:
    """One assessment running beside the main thread, so that the GUI stays responsive.

    Created on the main thread: the voxels are copied there (so later edits of the node cannot
    reach the running job) and handed to a runner (`jobs`) that never touches MRML, VTK or Qt:
    a worker thread (default; scripts), or with `child` (a jobs.ChildProcess) a child
    process of Slicer's Python, which the panel uses because Slicer's idle main thread holds
    the GIL. `poll()` (a timer on the main thread) follows it without blocking; `finish()`,
    called on the main thread once `done`, writes the results into the scene, unless the
    volume left the scene (node deleted, scene closed) meanwhile.
    """

    def __init__(self, volumeNode, model=None, orientation: str = "auto", device: str = "auto",
                 thresholds=None, min_foreground: float = 0.05, batch_size: int = 4,
                 overlay_style: str = "frame", child=None) -> None:
        from ..assessment.classes import ClinicalThresholds
        from . import jobs

        self.volume = volumeNode
        self.scene = _scene()
        self.volume_id = volumeNode.GetID()
        self.name = volumeNode.GetName()
        self.thresholds = thresholds if thresholds is not None else ClinicalThresholds()
        self.overlay_style = overlay_style
        data = self._read(volumeNode)  # main thread: MRML read here only
        args = dict(model=model, orientation=orientation, device=device,
                    batch_size=batch_size, thresholds=self.thresholds,
                    min_foreground=min_foreground)
        self.run = jobs.ChildRun(data, child=child, **args) if child is not None else \
            jobs.ThreadRun(data, **args)

    # -- what a subclass changes: what it reads and what it writes -----------------------

    def _read(self, node):
        """The input copied from the node (main thread)."""
        return volume_from_node(node)

    def _write(self) -> SceneResult:
        """The results written into the scene (main thread)."""
        return write_assessment(self.volume, self.assessment, self.thresholds, self.overlay_style)

    # -- the runner's state --------------------------------------------------------------

    done_slices = property(lambda self: self.run.done_slices)
    total_slices = property(lambda self: self.run.total_slices)
    stage = property(lambda self: self.run.stage)
    assessment = property(lambda self: self.run.assessment)
    error = property(lambda self: self.run.error)
    elapsed_s = property(lambda self: self.run.elapsed_s)
    cancelled = property(lambda self: self.run.cancelled)

    @property
    def done(self) -> bool:
        return self.run.poll()

    def poll(self) -> bool:
        """Follow the runner without blocking (a timer calls it); True once it has ended."""
        return self.run.poll()

    def cancel(self) -> None:
        """Stop the runner (a thread at its next batch, a child process at once); nothing will
        be written."""
        self.run.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        return self.run.wait(timeout)

    def volume_still_present(self) -> bool:
        scene = getattr(slicer, "mrmlScene", None)
        return (scene is self.scene and self.volume.GetScene() is scene
                and scene.GetNodeByID(self.volume_id) is self.volume)

    def finish(self) -> SceneResult | SeriesSceneResult | None:
        """Write the results into the scene (main thread, once `done`). Returns None when the
        job was cancelled or its volume is gone; raises the runner's error if it failed."""
        if not self.done:
            raise RuntimeError("the assessment is still running")
        if self.cancelled or not self.volume_still_present():
            return None
        if self.error is not None:
            raise self.error
        return self._write()


def assess_volume_node(
    volumeNode,
    model=None,
    orientation: str = "auto",
    device: str = "auto",
    thresholds=None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    batch_size: int = 32,
    min_foreground: float = 0.05,
    overlay_style: str = "frame",
) -> SceneResult:
    """Assess every slice of `volumeNode` and write table, chart and overlay into the scene.

    `model`: None (bundled default), a checkpoint path, or a loaded model (as the engine's
    assess_volume accepts). `progress(done, total)` and `cancel() -> bool` are passed to the
    engine; when cancelled, nothing is written to the scene.
    """
    from ..assessment.classes import ClinicalThresholds
    from ..assessment.devices import resolve_device
    from ..assessment.inference import assess_volume

    thresholds = thresholds if thresholds is not None else ClinicalThresholds()
    vol = volume_from_node(volumeNode)
    dev = resolve_device(device)
    assessment = assess_volume(
        vol,
        model=model,
        orientation=orientation,
        device=dev,
        batch_size=batch_size,
        thresholds=thresholds,
        min_foreground=min_foreground,
        progress=progress,
        cancel=cancel,
    )
    _record_device(assessment, dev)
    return write_assessment(volumeNode, assessment, thresholds, overlay_style)


def assess_sequence_node(source, browser=None, model=None, orientation: str = "auto",
                         device: str = "auto", thresholds=None, frames=None,
                         progress: Callable[[int, int], None] | None = None,
                         cancel: Callable[[], bool] | None = None, batch_size: int = 32,
                         min_foreground: float = 0.05, overlay_style: str = "frame",
                         follow: bool = True) -> SeriesSceneResult:
    """Assess every frame of a sequence node (or multi-volume node) slice by slice, with the
    model loaded once, and write the results (write_series_assessment). `browser`: the
    sequence browser whose proxy the views show (found when None); `frames`: a subset as
    `series.parse_frames` accepts (indices into the sequence)."""
    from ..assessment.classes import ClinicalThresholds
    from ..assessment.devices import resolve_device
    from ..assessment.frames import assess_series
    from ..imaging.series import parse_frames

    thresholds = thresholds if thresholds is not None else ClinicalThresholds()
    if browser is None and source.IsA("vtkMRMLSequenceNode"):
        browser = find_browser(source)
    series = read_series_source(source)
    if frames is not None:
        try:
            chosen = parse_frames(frames, series.n_frames)
        except ValueError as exc:
            raise InputError(f"{source.GetName()}: {exc}") from None
        series = _select_frames(series, chosen)
    dev = resolve_device(device)
    assessment = assess_series(series, model=model, orientation=orientation, device=dev,
                               batch_size=batch_size, thresholds=thresholds,
                               min_foreground=min_foreground, progress=progress,
                               cancel=cancel)
    _record_device(assessment, dev)
    return write_series_assessment(source, assessment, thresholds, browser, overlay_style,
                                   follow)


def _select_frames(series, chosen):
    """The frames `chosen` (input indices) of a Series."""
    from ..imaging.series import Series

    keep = [series.frame_indices.index(c) for c in chosen]
    return Series(series.array[keep], series.spacing, series.directions, series.origin,
                  tuple(series.frame_indices[k] for k in keep),
                  tuple(series.frame_labels[k] for k in keep), series.n_input_frames,
                  series.name)


class SeriesAssessmentJob(AssessmentJob):
    """AssessmentJob for a sequence or multi-volume node: the frames are copied on the main
    thread, the runner assesses them (series.assess_series, one model load), finish() writes
    the frame x slice table and the shown frame's results, and follows the browser."""

    def __init__(self, source, browser=None, model=None, orientation: str = "auto",
                 device: str = "auto", thresholds=None, min_foreground: float = 0.05,
                 batch_size: int = 4, overlay_style: str = "frame", child=None) -> None:
        self.browser = browser if browser is not None or not source.IsA(
            "vtkMRMLSequenceNode") else find_browser(source)
        super().__init__(source, model=model, orientation=orientation, device=device,
                         thresholds=thresholds, min_foreground=min_foreground,
                         batch_size=batch_size, overlay_style=overlay_style, child=child)

    def _read(self, node):
        return read_series_source(node)

    def _write(self) -> SeriesSceneResult:
        return write_series_assessment(self.volume, self.assessment, self.thresholds,
                                       self.browser, self.overlay_style)

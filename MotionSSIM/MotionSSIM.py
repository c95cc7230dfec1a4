"""MotionSSIM: reference-free motion-artefact assessment of the loaded MR volume, slice by slice.

Thin Slicer glue: the panel (Resources/UI/MotionSSIM.ui, state in a parameter node), dependency
installation at first use, progress/cancel, and the views. The work is done by the engine
(MotionSSIMLib: assessment for the inference, and MotionSSIMLib.bridge for everything written
into the scene).

Python console::

    logic = slicer.util.getModuleLogic("MotionSSIM")
    result = logic.process(slicer.util.getNode("MRHead"), device="cpu")
    print(result.summary["verdict"], result.summary["mean_ssim"])
"""

import importlib.util
import logging
import os
import pathlib
import sys

# Supported: 3D Slicer 5.8 (Python 3.9) and later. An older Slicer gets this one line in the
# module-loading error instead of a failure on the first Apply.
if sys.version_info < (3, 9):  # noqa: UP036 (ruff assumes 3.9; Slicer 4.x has 3.6)
    raise ImportError("MotionSSIM needs 3D Slicer 5.8 or later (Python 3.9+); this Slicer has "
                      f"Python {sys.version_info[0]}.{sys.version_info[1]}")

from typing import Annotated  # noqa: E402

import qt  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from slicer import vtkMRMLScalarVolumeNode  # noqa: E402
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin  # noqa: E402

MODEL_SOURCES = ["bundled model", "checkpoint file"]
ORIENTATIONS = ["auto", "axial", "coronal", "sagittal"]
DEVICES = ["auto", "cpu", "cuda"]
OVERLAY_STYLES = ["frame", "slice"]
# QSettings key where MotionSSIMTraining stores a newly trained model chosen by the user.
MODEL_SETTINGS_KEY = "MotionSSIM/ModelPath"
MINIMUM_SLICER = (5, 8)
POLL_INTERVAL_MS = 100  # progress of a running assessment
GUI_BATCH_SIZE = 4  # slices per batch when run from the panel: progress every few slices
SAMPLE_FILE = "sample_t2_motion.nii.gz"
# SampleData compares its cached copy with this and copies the file again when they differ
# (without a checksum a stale copy from an older version is reused). Testing/
# test_slicer_module.py checks it against the file.
SAMPLE_SHA256 = "SHA256:842b2c22f4ea4f1a7f4e7c52579493b21f1ff73e4d0849b150ab269c00a91f69"
REPOSITORY_URL = "https://github.com/motionssim/SlicerMotionSSIM"
# "Name (Affiliation)", as the Extensions Index lists contributors; the same in CMakeLists.txt
CONTRIBUTORS = ["MotionSSIM maintainers (SlicerMotionSSIM project)"]


def slicerVersionProblem():
    """One line when this Slicer is older than the oldest supported one, else None."""
    version = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if version < MINIMUM_SLICER:
        return (f"MotionSSIM needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later; "
                f"this is {version[0]}.{version[1]}: install a current Slicer.")
    return None


#
# Module
#


class MotionSSIM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MotionSSIM"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = CONTRIBUTORS
        self.parent.helpText = (
            "Predicts, for every slice of the selected MR volume, the SSIM the slice would have "
            "against a motion-free version of itself (no reference image needed), and classifies "
            "each slice as good (SSIM &gt;= 0.85), sufficient (0.60-0.85) or insufficient: "
            "re-scan (&lt; 0.60). Results: a table, a chart (click a point to jump to the slice), "
            "a coloured verdict overlay on the slice views and a volume verdict. "
            f'<a href="{REPOSITORY_URL}">Documentation</a>.'
        )
        self.parent.acknowledgementText = (
            "Method: S. Chatterjee, A. Sciarra, M. Duennwald, et al., Automated SSIM Regression "
            "for Detection and Quantification of Motion Artefacts in Brain MR Images. "
            "Uses PyTorch (PyTorch extension), TorchIO and 3D Slicer."
        )
        # the bundled sample in the Sample Data module (after start-up: SampleData must exist)
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Sample Data > MotionSSIM: the bundled T2 volume with simulated motion (no download: the
    file ships with the module and is copied from its file:// address)."""
    try:
        import SampleData
    except ImportError:  # Slicer built without the Sample Data module
        return
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "Resources", "Samples", SAMPLE_FILE)
    if not os.path.isfile(path):
        return
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MotionSSIM",
        sampleName="MotionSSIMSampleT2",
        uris=pathlib.Path(path).as_uri(),
        fileNames=SAMPLE_FILE,
        nodeNames="MotionSSIM sample T2 (motion)",
        checksums=SAMPLE_SHA256,
        thumbnailFileName=os.path.join(here, "Resources", "Icons", "MotionSSIM.png"),
    )


#
# Parameters (bound to the .ui widgets through their SlicerParameterName property)
#


@parameterNodeWrapper
class MotionSSIMParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    modelSource: Annotated[str, Choice(MODEL_SOURCES)] = MODEL_SOURCES[0]
    modelPath: pathlib.Path
    orientation: Annotated[str, Choice(ORIENTATIONS)] = "auto"
    device: Annotated[str, Choice(DEVICES)] = "auto"
    goodThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.85
    sufficientThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.60
    minForeground: Annotated[float, WithinRange(0.0, 1.0)] = 0.05
    overlayStyle: Annotated[str, Choice(OVERLAY_STYLES)] = "frame"


def parameterWidgets(ui, skip=()) -> dict:
    """SlicerParameterName -> widget, for the widgets of `ui` (childWidgetVariables): what
    connectGui(ui) binds, less the names in `skip` (path fields: PathFields binds them). Both
    modules bind through connectParametersToGui(this), which returns a tag on Slicer 5.8 too,
    where connectGui returns None (wrapper.py) so that disconnectGui could never disconnect."""
    found = {}
    for widget in vars(ui).values():
        name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
        if name and str(name) not in skip:
            found[str(name)] = widget
    return found


def pathText(value) -> str:
    """What a path field shows for a pathlib.Path parameter: nothing when it is unset (the
    wrapper's default pathlib.Path() reads '.', which its ctkPathLineEdit connector shows)."""
    return "" if value is None or str(value) in ("", ".") else str(value)


class PathFields:
    """Binds pathlib.Path parameters to ctkPathLineEdits in place of the wrapper's connector,
    so that an unset path shows an empty field. The widgets' signals are connected once (in
    setup); `setNode` follows a new parameter node, `update` shows the node's values (call it
    from the node's ModifiedEvent observer)."""

    def __init__(self, widgets: dict) -> None:
        self.widgets = widgets  # parameter name -> ctkPathLineEdit
        self.node = None
        for name, widget in widgets.items():
            widget.connect("currentPathChanged(QString)",
                           lambda text, name=name: self._fromWidget(name, text))

    def setNode(self, node) -> None:
        self.node = node
        self.update()

    def _fromWidget(self, name: str, text: str) -> None:
        if self.node is not None and pathText(getattr(self.node, name)) != text:
            setattr(self.node, name, pathlib.Path(text) if text else pathlib.Path())

    def update(self, caller=None, event=None) -> None:
        if self.node is None:
            return
        for name, widget in self.widgets.items():
            text = pathText(getattr(self.node, name))
            if widget.currentPath != text:
                wasBlocked = widget.blockSignals(True)  # not written back as a user edit
                widget.currentPath = text
                widget.blockSignals(wasBlocked)


def sameParameterNode(a, b) -> bool:
    """Whether two parameter node wrappers wrap the same MRML node."""
    return a is not None and b is not None and a.parameterNode is b.parameterNode


#
# Widget
#


class MotionSSIMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._result = None
        self._seriesResult = None  # bridge.series_results.SeriesSceneResult of a sequence
        self._plotViews = []
        self._tableViews = []
        self._sliceObservations = []
        self._job = None  # the running MotionSSIMLib.bridge.node_jobs.AssessmentJob, if any
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollJob)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        problem = slicerVersionProblem()
        if problem:
            self.layout.addWidget(qt.QLabel(problem))
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MotionSSIM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self._pathFields = PathFields({"modelPath": self.ui.modelPathLineEdit})

        self.logic = MotionSSIMLogic()
        self.logic.logCallback = self.log

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAboutToBeRemovedEvent,
                         self.onNodeAboutToBeRemoved)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.worstSlicesListWidget.connect("itemClicked(QListWidgetItem*)", self.onWorstSliceClicked)
        self.ui.packageInfoButton.connect("clicked(bool)", self.onPackageInfo)
        self.ui.forceReinstallButton.connect("clicked(bool)", self.onForceReinstall)
        self.ui.modelPathLineEdit.nameFilters = ["MotionSSIM checkpoint (*.safetensors)"]
        self.ui.progressBar.visible = False

        self.initializeParameterNode()
        # cheap: package metadata only; torch is imported on the first Apply, not here
        self.ui.torchInfoLabel.text = self.logic.torchInfo()
        self.log(self.logic.dependencyReport().text())

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()  # a child process: its tree ends now (and its files go)
            self._job = None
        self._timer.stop()
        self._stopSeries()  # the observer on the sequence browser
        self.setParameterNode(None)
        self.removeObservers()
        self._removeViewConnections()

    def enter(self) -> None:
        self.initializeParameterNode()  # the same node: kept connected (setParameterNode)

    def exit(self) -> None:
        # The GUI stays connected to the parameter node while the module is not shown:
        # reconnecting on enter() would reset the comboboxes on Slicer 5.8 (issue 7545).
        pass

    def log(self, message: str) -> None:
        """A line in the panel's status box (and the application log)."""
        logging.info(f"MotionSSIM: {message}")
        if hasattr(self, "ui"):
            self.ui.statusLog.appendPlainText(message)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()  # its result must not land in the next scene
            self.log("Scene closed: the running assessment was cancelled.")
        self._stopSeries()
        self._result = None
        self._removeViewConnections()
        self._clearViewText()
        self._showSummary()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAboutToBeRemoved(self, caller, event, node) -> None:
        if self._job is not None and node is self._job.volume:
            self._job.cancel()
            self.log(f"{self._job.name} was deleted: its assessment was cancelled.")
        if self._result is not None and node is self._result.volume:
            self._result = None
            self._removeViewConnections()
            self._clearViewText()
            self._showSummary()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode
        trained = qt.QSettings().value(MODEL_SETTINGS_KEY, "")
        if trained and os.path.isfile(trained) and str(self._parameterNode.modelPath) in ("", "."):  # unset
            self._parameterNode.modelPath = pathlib.Path(trained)
            self._parameterNode.modelSource = MODEL_SOURCES[1]

    def setParameterNode(self, inputParameterNode) -> None:
        """Connect the GUI once per parameter node (a new one only after a scene close)."""
        if sameParameterNode(inputParameterNode, self._parameterNode):
            self._checkCanApply()
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(
                parameterWidgets(self.ui, skip=self._pathFields.widgets))
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._pathFields.setNode(self._parameterNode)
        if self._parameterNode:
            self._checkCanApply()

    def _setInputsEnabled(self, enabled: bool) -> None:
        """Inputs are frozen while an assessment runs (the job works on a copy made at Apply)."""
        for widget in (self.ui.inputsCollapsibleButton, self.ui.advancedCollapsibleButton):
            widget.enabled = enabled

    def _checkCanApply(self, caller=None, event=None) -> None:
        self._pathFields.update()
        if self._job is not None:  # the button is Cancel while running
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the running assessment (the scene is unchanged)"
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = "Apply"
        p = self._parameterNode
        if p is None:
            self.ui.applyButton.enabled = False
            return
        useFile = p.modelSource == MODEL_SOURCES[1]
        self.ui.modelPathLineEdit.enabled = useFile
        from MotionSSIMLib.bridge import node_jobs

        problems = node_jobs.validate_settings(p.inputVolume, p.goodThreshold,
                                               p.sufficientThreshold)
        if not problems and useFile and not p.modelPath.is_file():
            problems.append("Select a checkpoint file (.safetensors)")
        self.ui.applyButton.toolTip = problems[0] if problems else "Predict the SSIM of every slice"
        self.ui.applyButton.enabled = not problems

    def onInputChanged(self, node) -> None:
        """Show earlier results of the newly selected volume (or clear the results and views)."""
        from MotionSSIMLib.bridge import volume_results

        self._result = volume_results.find_result(node) if node else None
        self._showSummary()
        if self._result is None:
            self._removeViewConnections()
            self._clearViewText()
        else:
            self._connectViews()

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._job.cancel()  # the child's whole process tree ends at once
            self.log("Cancelling...")
            return
        p = self._parameterNode
        # no wait cursor here: the installation and restart questions must look clickable
        with slicer.util.tryWithErrorDisplay("MotionSSIM failed."):
            if not ensureDependenciesWithConfirmation(self.logic):
                return
            from MotionSSIMLib.bridge import series_results

            source = series_results.series_source(p.inputVolume)
            wholeSeries = False
            if source is not None:
                wholeSeries = self._askSeriesScope(p.inputVolume, source[0])
                if wholeSeries is None:
                    return
            with slicer.util.WaitCursor():  # the voxels are copied for the child process
                self._job = self.logic.startAssessment(
                    p.inputVolume, model=self._modelArgument(), orientation=p.orientation,
                    device=p.device, goodThreshold=p.goodThreshold,
                    sufficientThreshold=p.sufficientThreshold, minForeground=p.minForeground,
                    overlayStyle=p.overlayStyle, wholeSeries=wholeSeries)
            what = f"all {self._job.volume.GetName()} frames" if wholeSeries else self._job.name
            self.log(f"Assessing {what} in a separate process (device: {p.device})...")
            self._setInputsEnabled(False)
            self.ui.progressBar.maximum = 0  # busy until the slice count is known
            self.ui.progressBar.value = 0
            self.ui.progressBar.visible = True
            self._checkCanApply()
            self._timer.start()

    def _askSeriesScope(self, volume, source):
        """A sequence: assess the frame shown or all frames? True all, False this frame, None
        cancelled. A multi-volume node holds all frames in one node: always all."""
        if not source.IsA("vtkMRMLSequenceNode"):
            return True
        from MotionSSIMLib.bridge import jobs

        frames = source.GetNumberOfDataNodes()
        estimate = jobs.series_estimate(frames, self.logic.slicesPerFrame(volume),
                                        self.logic.secondsPerSlice)
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("MotionSSIM")
        box.setText(f"{volume.GetName()} is a frame of the sequence {source.GetName()}.")
        box.setInformativeText(f"Assess only the frame shown, or all {frames} frames "
                               f"({estimate})?")
        thisFrame = box.addButton("This frame", qt.QMessageBox.AcceptRole)
        allFrames = box.addButton(f"All {frames} frames", qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.setDefaultButton(thisFrame)
        box.exec_()
        clicked = box.clickedButton()
        return True if clicked == allFrames else False if clicked == thisFrame else None

    def onPackageInfo(self) -> None:
        self.log(self.logic.packageInfo())

    def onForceReinstall(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(
                "Reinstall MotionSSIM's Python packages (Slicer's numpy, scipy, SimpleITK and "
                "vtk and the PyTorch extension's torch are kept as they are)?", "MotionSSIM"):
            return
        with slicer.util.tryWithErrorDisplay("Reinstalling failed."):
            with slicer.util.WaitCursor():
                restart = self.logic.installDependencies(force=True)
            offerRestart(restart, "MotionSSIM")

    def onPollJob(self) -> None:
        """Timer on the main thread: progress, then the results written into the scene."""
        job = self._job
        if job is None:
            self._timer.stop()
            return
        finished = job.poll()  # reads the child's new output lines; never blocks
        if job.total_slices:
            self.ui.progressBar.maximum = job.total_slices
            self.ui.progressBar.value = job.done_slices
        if not finished:
            return
        self._timer.stop()
        self._job = None
        self.ui.progressBar.visible = False
        self._setInputsEnabled(True)
        self._checkCanApply()
        try:
            result = job.finish()
        except Exception as exc:  # one line (a crash of the child included); Slicer goes on
            self.log(f"Failed after {job.elapsed_s:.1f} s: {exc}")
            for line in getattr(exc, "log", [])[-10:]:  # a crash: the child's last words
                logging.error(f"MotionSSIM child process: {line}")
            slicer.util.errorDisplay(f"MotionSSIM failed: {exc}", windowTitle="MotionSSIM")
            return
        if result is None:
            self.log(f"Cancelled after {job.elapsed_s:.1f} s: the scene is unchanged.")
            return
        self.logic.rememberSpeed(job)
        from MotionSSIMLib.bridge import series_results

        if isinstance(result, series_results.SeriesSceneResult):
            self._showSeriesResult(result, job)
            return
        self._result = result
        s = result.summary
        self.log(f"{job.name}: {s.get('verdict')} (mean SSIM {_formatNumber(s.get('mean_ssim'))}"
                 f"), {len(result.assessment.records)} slices on {s.get('device')} in "
                 f"{job.elapsed_s:.1f} s")
        self.ui.torchInfoLabel.text = self.logic.torchInfo(loaded=True)
        self.logic.showResults(result)
        self._connectViews()
        self._showSummary()

    def _showSeriesResult(self, result, job) -> None:
        """A series: the frame x slice table beside the chart of the frame shown (which follows
        the sequence browser); a click on a cell shows that frame and slice."""
        self._stopSeries()
        self._seriesResult = result
        self._result = result.frame_result
        s = result.assessment.summary
        worst = s["worst_slices"][0] if s.get("worst_slices") else None
        self.log(f"{job.name}: {s.get('verdict')} over {s.get('n_frames')} frames "
                 + (f"(worst: frame {worst['frame']}, slice {worst['index']}, SSIM "
                    f"{worst['ssim']:.2f}) " if worst else "")
                 + f"on {s.get('device')} in {job.elapsed_s:.1f} s")
        self.ui.torchInfoLabel.text = self.logic.torchInfo(loaded=True)
        self.logic.showSeriesResults(result)
        self._connectViews()
        self._showSummary()

    def _stopSeries(self) -> None:
        if self._seriesResult is not None:
            from MotionSSIMLib.bridge import series_results

            series_results.stop_following(self._seriesResult)
        self._seriesResult = None

    def onHeatmapClicked(self, index) -> None:
        """A cell of the frame x slice table clicked: show that frame and slice."""
        from MotionSSIMLib.bridge import series_results

        result = self._seriesResult
        if result is None or not index.isValid():
            return
        model = index.model()
        if hasattr(model, "mapToSource"):  # the view's sort proxy: back to table rows
            index = model.mapToSource(index)
        # the table uses its column names as header and no row-header column: model row and
        # column are the table's (qMRMLTableModel.updateModelFromMRML)
        cell = series_results.heatmap_cell(result, index.row(), index.column())
        if cell is not None:
            series_results.jump_to_frame_and_slice(result, *cell)
            self._result = result.frame_result
            self._showSummary()

    def _modelArgument(self):
        p = self._parameterNode
        return str(p.modelPath) if p.modelSource == MODEL_SOURCES[1] else None

    # -- results area ---------------------------------------------------------------------

    def _showSummary(self) -> None:
        ui = self.ui
        ui.worstSlicesListWidget.clear()
        if self._result is None:
            for label in (ui.verdictLabel, ui.meanSSIMLabel, ui.minSSIMLabel, ui.countsLabel):
                label.text = "-"
            ui.resultsCollapsibleButton.collapsed = True
            return
        s = self._result.summary
        ui.resultsCollapsibleButton.collapsed = False
        ui.verdictLabel.text = str(s.get("verdict", "-"))
        ui.meanSSIMLabel.text = _formatNumber(s.get("mean_ssim"))
        ui.minSSIMLabel.text = _formatNumber(s.get("min_ssim"))
        counts = s.get("counts", {})
        ui.countsLabel.text = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"
        from MotionSSIMLib.bridge import volume_results

        rows = _rowsOfSlices(self._result, s.get("worst_slices", []))
        for row in rows:
            item = qt.QListWidgetItem(volume_results.row_text(self._result, row))
            item.setData(qt.Qt.UserRole, row)
            ui.worstSlicesListWidget.addItem(item)

    def onWorstSliceClicked(self, item) -> None:
        from MotionSSIMLib.bridge import volume_results

        if self._result is not None:
            volume_results.jump_to_row(self._result, int(item.data(qt.Qt.UserRole)))

    # -- views: chart picking and slice annotations ----------------------------------------

    def _connectViews(self) -> None:
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or self._result is None:
            return
        self._removeViewConnections()
        for i in range(layoutManager.plotViewCount):
            plotView = layoutManager.plotWidget(i).plotView()
            plotView.connect("dataSelected(vtkStringArray*, vtkCollection*)", self.onDataSelected)
            self._plotViews.append(plotView)
        if self._seriesResult is not None:
            for i in range(layoutManager.tableViewCount):
                tableView = layoutManager.tableWidget(i).tableView()
                tableView.connect("clicked(QModelIndex)", self.onHeatmapClicked)
                self._tableViews.append(tableView)
        for name in layoutManager.sliceViewNames():
            sliceNode = layoutManager.sliceWidget(name).mrmlSliceNode()
            tag = sliceNode.AddObserver(vtk.vtkCommand.ModifiedEvent, self.onSliceModified)
            self._sliceObservations.append((sliceNode, tag))
        self.onSliceModified()

    def _removeViewConnections(self) -> None:
        for plotView in self._plotViews:
            plotView.disconnect("dataSelected(vtkStringArray*, vtkCollection*)", self.onDataSelected)
        self._plotViews = []
        for tableView in self._tableViews:
            tableView.disconnect("clicked(QModelIndex)", self.onHeatmapClicked)
        self._tableViews = []
        for sliceNode, tag in self._sliceObservations:
            sliceNode.RemoveObserver(tag)
        self._sliceObservations = []

    def _clearViewText(self) -> None:
        """Remove 'slice k: SSIM x, class' from every slice view (no result for what is shown)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        for name in layoutManager.sliceViewNames():
            view = layoutManager.sliceWidget(name).sliceView()
            view.cornerAnnotation().SetText(vtk.vtkCornerAnnotation.UpperEdge, "")
            view.scheduleRender()

    def onDataSelected(self, seriesIDs, selections) -> None:
        """A point picked in the chart: move the slice views to that slice."""
        from MotionSSIMLib.bridge import volume_results

        if self._result is None:
            return
        for i in range(seriesIDs.GetNumberOfValues()):
            selection = selections.GetItemAsObject(i)
            if selection is None or selection.GetNumberOfTuples() == 0:
                continue
            row = volume_results.row_for_point(self._result, seriesIDs.GetValue(i),
                                               selection.GetValue(0))
            if row is not None:
                volume_results.jump_to_row(self._result, row)
                return

    def onSliceModified(self, caller=None, event=None) -> None:
        """Corner text 'slice k: SSIM x, class' in every view parallel to the assessed slices."""
        from MotionSSIMLib.bridge import volume_results

        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        if self._result is None or not self._result.volume.GetScene():
            self._clearViewText()
            return
        for name in layoutManager.sliceViewNames():
            widget = layoutManager.sliceWidget(name)
            text = volume_results.view_text(
                self._result, widget.mrmlSliceNode().GetSliceToRAS()) or ""
            view = widget.sliceView()
            # The upper edge: DataProbe's slice annotations use the corners.
            view.cornerAnnotation().SetText(vtk.vtkCornerAnnotation.UpperEdge, text)
            view.scheduleRender()


def ensureDependenciesWithConfirmation(logic, requester: str = "MotionSSIM") -> bool:
    """GUI side of the dependency check (both modules): ask once, listing what is missing or of
    the wrong version, then let the Logic install it. False when the user declines."""
    report = logic.dependencyReport()
    if report.ok:
        return True
    lines = "\n".join(p.text() for p in report.problems())
    if not slicer.util.confirmOkCancelDisplay(
        f"{requester} needs these Python packages:\n\n{lines}\n\nInstall them now? PyTorch "
        "comes from the PyTorch extension (a large download with GPU support, several minutes); "
        "the others from PyPI. Slicer's numpy, SimpleITK and vtk are not changed.",
        f"{requester}: install packages",
    ):
        logic.log("Installation declined: nothing was changed.")
        return False
    # the wait cursor only while installing: the questions above and below stay clickable
    # (tryWithErrorDisplay(waitCursor=True) would set it before them)
    with slicer.util.WaitCursor():
        restart = logic.installDependencies(report)
    if restart:
        offerRestart(restart, requester)
        return False
    return True


def offerRestart(message, requester: str = "MotionSSIM") -> None:
    """After an installation that needs a restart: ask, and restart Slicer if the user agrees."""
    if message and slicer.util.confirmYesNoDisplay(f"{message}\n\nRestart Slicer now?",
                                                   windowTitle=requester):
        slicer.util.restart()


def _formatNumber(value) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _rowsOfSlices(result, sliceIndices) -> list:
    from MotionSSIMLib.bridge import volume_results

    # summary["worst_slices"]: [{"index": k, "ssim": x}, ...] (plain indices accepted too)
    rows = [
        volume_results.row_of_slice(result, int(item["index"] if isinstance(item, dict) else item))
        for item in sliceIndices
    ]
    return [row for row in rows if row is not None]


#
# Logic
#


class MotionSSIMLogic(ScriptedLoadableModuleLogic):
    """Headless entry point (console, scripts, tests): see process()."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback = None  # the panel's status box; None: the application log
        self.secondsPerSlice = None  # measured by the last assessment (rememberSpeed)

    def getParameterNode(self):
        return MotionSSIMParameterNode(super().getParameterNode())

    def process(
        self,
        inputVolume,
        model=None,
        orientation: str = "auto",
        device: str = "auto",
        goodThreshold: float = 0.85,
        sufficientThreshold: float = 0.60,
        minForeground: float = 0.05,
        overlayStyle: str = "frame",
        progress=None,
        cancel=None,
        showResults: bool = True,
    ):
        """Assess every slice of `inputVolume`; write table, chart and overlay into the scene.

        model: None (bundled model), a checkpoint path (.safetensors) or a loaded model.
        Returns MotionSSIMLib.bridge.volume_results.SceneResult (nodes + the engine's summary).
        Assessing the same volume again updates the same nodes.
        """
        import time

        from MotionSSIMLib.assessment.classes import ClinicalThresholds
        from MotionSSIMLib.bridge import node_jobs

        problem = slicerVersionProblem()
        problems = ([problem] if problem else []) + node_jobs.validate_settings(
            inputVolume, goodThreshold, sufficientThreshold)
        if problems:
            raise ValueError(f"MotionSSIM: {problems[0]}")
        thresholds = ClinicalThresholds(good=goodThreshold, sufficient=sufficientThreshold)
        start = time.time()
        result = node_jobs.assess_volume_node(
            inputVolume,
            model=model,
            orientation=orientation,
            device=device,
            thresholds=thresholds,
            progress=progress,
            cancel=cancel,
            min_foreground=minForeground,
            overlay_style=overlayStyle,
        )
        self.log(
            f"{inputVolume.GetName()}: {result.summary.get('verdict')} on "
            f"{result.summary.get('device')} ({time.time() - start:.1f} s)"
        )
        if showResults:
            self.showResults(result)
        return result

    def startAssessment(self, inputVolume, model=None, orientation: str = "auto",
                        device: str = "auto", goodThreshold: float = 0.85,
                        sufficientThreshold: float = 0.60, minForeground: float = 0.05,
                        overlayStyle: str = "frame", wholeSeries: bool = False):
        """Start assessing `inputVolume` (with `wholeSeries`, every frame of the sequence or
        multi-volume it shows) in a child process of Slicer's Python, and return the
        MotionSSIMLib.bridge.node_jobs.AssessmentJob at once: call its poll() from a timer (it never
        blocks), and finish() once it is done to write the results into the scene.

        A child process and not a thread: Slicer's main thread holds the GIL while it idles in
        the Qt event loop, so a Python thread would run only while Slicer runs Python.
        """
        from MotionSSIMLib.assessment.classes import ClinicalThresholds
        from MotionSSIMLib.bridge import jobs, node_jobs, series_results

        problem = slicerVersionProblem()
        problems = ([problem] if problem else []) + node_jobs.validate_settings(
            inputVolume, goodThreshold, sufficientThreshold)
        if problems:
            raise ValueError(f"MotionSSIM: {problems[0]}")
        args = dict(model=model, orientation=orientation, device=device,
                    thresholds=ClinicalThresholds(good=goodThreshold,
                                                  sufficient=sufficientThreshold),
                    min_foreground=minForeground, batch_size=GUI_BATCH_SIZE,
                    overlay_style=overlayStyle,
                    child=jobs.ChildProcess(env=slicer.util.startupEnvironment(),
                                            temp_root=slicer.app.temporaryPath))
        source = series_results.series_source(inputVolume) if wholeSeries else None
        if source is not None:
            return node_jobs.SeriesAssessmentJob(source[0], browser=source[1], **args)
        return node_jobs.AssessmentJob(inputVolume, **args)

    def rememberSpeed(self, job) -> None:
        """Seconds per slice of a finished job (start-up included): the next estimate."""
        if job.total_slices:
            self.secondsPerSlice = job.elapsed_s / job.total_slices

    @staticmethod
    def slicesPerFrame(volumeNode, orientation: str = "auto") -> int:
        from MotionSSIMLib.bridge import nodes
        from MotionSSIMLib.imaging import geometry

        return geometry.slice_count(nodes.volume_from_node(volumeNode), orientation)

    def processSequence(
        self,
        source,
        browser=None,
        model=None,
        orientation: str = "auto",
        device: str = "auto",
        goodThreshold: float = 0.85,
        sufficientThreshold: float = 0.60,
        minForeground: float = 0.05,
        overlayStyle: str = "frame",
        frames=None,
        progress=None,
        cancel=None,
        showResults: bool = True,
    ):
        """Assess every frame of a sequence node (or multi-volume node), slice by slice.

        Writes a frame x slice table (referenced from the sequence), and the per-slice table,
        chart and overlay of the frame the sequence browser shows; they follow the browser
        when it shows another frame. `frames`: a subset of frame indices ("0:10", "3,5,7").
        Returns MotionSSIMLib.bridge.series_results.SeriesSceneResult.
        """
        import time

        from MotionSSIMLib.assessment.classes import ClinicalThresholds
        from MotionSSIMLib.bridge import node_jobs

        problem = slicerVersionProblem()
        if problem:
            raise ValueError(f"MotionSSIM: {problem}")
        thresholds = ClinicalThresholds(good=goodThreshold, sufficient=sufficientThreshold)
        start = time.time()
        result = node_jobs.assess_sequence_node(
            source, browser=browser, model=model, orientation=orientation, device=device,
            thresholds=thresholds, frames=frames, progress=progress, cancel=cancel,
            min_foreground=minForeground, overlay_style=overlayStyle)
        s = result.assessment.summary
        self.log(f"{source.GetName()}: {s.get('verdict')} over {s.get('n_frames')} frames on "
                 f"{s.get('device')} ({time.time() - start:.1f} s)")
        if showResults:
            self.showSeriesResults(result)
        return result

    def showSeriesResults(self, result) -> None:
        """Layout with a chart and a table: the chart of the frame shown, the frame x slice
        table; the frame's overlay as the label layer of its volume."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        appLogic = slicer.app.applicationLogic()
        selection = appLogic.GetSelectionNode()
        selection.SetActiveTableID(result.heatmap.GetID())
        appLogic.PropagateTableSelection()
        if result.frame_result is not None:
            selection.SetActivePlotChartID(result.frame_result.chart.GetID())
            appLogic.PropagatePlotChartSelection()
            slicer.util.setSliceViewerLayers(background=result.display,
                                             label=result.frame_result.overlay,
                                             labelOpacity=1.0, fit=False)

    def showResults(self, result) -> None:
        """Chart in the layout next to the slice views; verdict overlay as the label layer."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (headless, testing without GUI)
            return
        slicer.modules.plots.logic().ShowChartInLayout(result.chart)
        slicer.util.setSliceViewerLayers(
            background=result.volume, label=result.overlay, labelOpacity=1.0, fit=False
        )

    # -- status and dependencies (no dialogs here: the Widget asks, the Logic reports) ------

    def log(self, message: str) -> None:
        """Progress messages: the panel's status box when a widget set logCallback, else the log."""
        callback = getattr(self, "logCallback", None)
        if callback is not None:
            callback(message)
        else:
            logging.info(f"MotionSSIM: {message}")

    @staticmethod
    def torchInfo(loaded: bool = False) -> str:
        """The torch build, read from package metadata (torch is not imported: opening the panel
        stays fast). With `loaded` (after an assessment imported torch anyway), the GPU found."""
        from MotionSSIMLib.bridge import dependencies

        text = dependencies.torch_build_info()
        torch = sys.modules.get("torch") if loaded else None
        if torch is not None:
            if torch.cuda.is_available():
                text += f": {torch.cuda.get_device_name(0)}"
            elif getattr(getattr(torch.backends, "mps", None), "is_available", lambda: False)():
                text += ": Apple MPS"
            else:
                text += ": no GPU found, CPU used"
        return text

    @staticmethod
    def requirementsPath() -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

    def dependencyReport(self):
        """What is installed, missing or of the wrong version (torch, torchvision and
        Resources/requirements.txt): a MotionSSIMLib.bridge.dependencies.DependencyReport."""
        from MotionSSIMLib.bridge import dependencies

        return dependencies.check(dependencies.read_requirements(self.requirementsPath()))

    def packageInfo(self) -> str:
        """The installed versions of what MotionSSIM uses, and of Slicer's own packages."""
        from MotionSSIMLib.bridge import dependencies

        return "Python packages:\n" + dependencies.package_info(
            dependencies.read_requirements(self.requirementsPath()))

    def installDependencies(self, report=None, force: bool = False):
        """Install what `report` (default: dependencyReport()) lists as missing or of the wrong
        version: torch/torchvision through the PyTorch extension, the rest with pip under
        constraints that pin Slicer's numpy, scipy, SimpleITK and vtk and the installed torch
        (dependencies.PINNED). `force`: reinstall every package of requirements.txt (not torch,
        which the PyTorch extension manages). Opens no dialog (usable from scripts).

        Returns None when everything can be used now, or a one-line message when Slicer must be
        restarted (an older version of a package was already imported).
        """
        from MotionSSIMLib.bridge import dependencies

        report = report if report is not None else self.dependencyReport()
        if report.ok and not force:
            return None
        loaded = []
        torchProblems = report.torch_problems()
        if torchProblems:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(
                    "MotionSSIM needs PyTorch: install the 'PyTorch' extension from the "
                    "Extensions Manager, restart Slicer and try again."
                ) from None
            self.log("Installing PyTorch through the PyTorch extension: "
                     + ", ".join(p.text() for p in torchProblems))
            loaded += [p.requirement.name for p in torchProblems if p.requirement.name in sys.modules]
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False,
                torchVersionRequirement=dependencies.TORCH_REQUIREMENT[len("torch"):],
                torchvisionVersionRequirement=dependencies.TORCHVISION_REQUIREMENT[len("torchvision"):],
            )
            if torch is None:
                raise RuntimeError("PyTorch installation failed: see the Python console.")
        pipProblems = report.pip_problems()
        if force:  # every pip package, installed or not
            pipProblems = [p for p in report.packages if p not in report.torch_problems()
                           and dependencies.normalize(p.requirement.name)
                           not in ("torch", "torchvision")]
        if pipProblems:
            lines = [str(p.requirement) for p in pipProblems]
            self.log(("Reinstalling" if force else "Installing") + " with pip: " + " ".join(lines))
            importNames = {v: k for k, v in dependencies.IMPORT_TO_DISTRIBUTION.items()}
            loaded += [p.requirement.name for p in pipProblems if p.installed is not None
                       and importNames.get(p.requirement.name, p.requirement.name) in sys.modules]
            constraintsPath = dependencies.write_constraints(
                os.path.join(slicer.app.temporaryPath, "MotionSSIM-constraints.txt"))
            try:
                if force:  # the packages themselves; then anything missing, as usual
                    slicer.util.pip_install(dependencies.pip_arguments(lines, constraintsPath,
                                                                       force=True))
                slicer.util.pip_install(dependencies.pip_arguments(lines, constraintsPath))
            except Exception as exc:  # CalledProcessError: no network, most often
                logging.error(f"MotionSSIM: pip failed: {exc}")
                raise RuntimeError(dependencies.offline_message(lines)) from None
        after = self.dependencyReport()
        self.log(after.text())
        if not after.ok:
            raise RuntimeError("Still missing after installation: "
                               + "; ".join(p.text() for p in after.problems()))
        if loaded:
            return (f"Updated {', '.join(loaded)}, which this session had already loaded: "
                    "restart Slicer to use the new versions.")
        return None


#
# Test (run inside Slicer: Developer mode > Reload and Test, or ctest)
#


class MotionSSIMTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MotionSSIM_parameters()
        self.setUp()
        self.test_MotionSSIM_process()
        self.setUp()
        self.test_MotionSSIM_background()

    def _skippedWithoutTorch(self, what):
        """True (and says so) when PyTorch or another requirement is missing: build machines
        have none, so the torch paths are tested where everything is installed."""
        if importlib.util.find_spec("torch") is None:
            self.delayDisplay(f"PyTorch is not installed: {what} skipped")
            return True
        report = MotionSSIMLogic().dependencyReport()
        if not report.ok:
            self.delayDisplay(f"{what} skipped: " + "; ".join(p.text() for p in report.problems()))
            return True
        return False

    def _phantomVolume(self):
        import numpy as np

        shape = (6, 48, 40)  # [k, j, i]
        k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
        inside = j**2 + i**2 < 0.7  # a cylinder: every axial slice has foreground...
        array = np.where(inside, 100.0 + 40.0 * j + 10.0 * k, 0.0).astype("float32")
        array[0] = 0.0  # ...except this empty one
        ijkToRAS = np.diag([0.9, 0.9, 4.0, 1.0])
        return slicer.util.addVolumeFromArray(array, ijkToRAS, name="MotionSSIMTestVolume")

    def test_MotionSSIM_parameters(self):
        logic = MotionSSIMLogic()
        parameters = logic.getParameterNode()
        self.assertEqual(parameters.orientation, "auto")
        self.assertAlmostEqual(parameters.goodThreshold, 0.85)
        self.assertAlmostEqual(parameters.sufficientThreshold, 0.60)
        volume = self._phantomVolume()
        parameters.inputVolume = volume
        self.assertEqual(parameters.inputVolume.GetID(), volume.GetID())
        from MotionSSIMLib.bridge import volume_results

        self.assertIsNone(volume_results.find_result(volume))
        self.delayDisplay("Parameter node test passed")

    def test_MotionSSIM_process(self):
        if self._skippedWithoutTorch("inference test"):
            return
        import tempfile

        import torch

        from MotionSSIMLib.assessment.checkpoint import save_checkpoint
        from MotionSSIMLib.assessment.model import build_model

        volume = self._phantomVolume()
        with tempfile.TemporaryDirectory() as folder:
            torch.manual_seed(0)
            path = os.path.join(folder, "random.safetensors")
            save_checkpoint(path, build_model("resnet18").eval(), {"architecture": "resnet18"})
            logic = MotionSSIMLogic()
            first = logic.process(volume, model=path, device="cpu")
            tables = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode")
            second = logic.process(volume, model=path, device="cpu", goodThreshold=0.9)
        self.assertEqual(first.table.GetNumberOfRows(), 6)
        self.assertEqual(first.table.GetID(), second.table.GetID())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode"), tables)
        import numpy as np

        labels = slicer.util.arrayFromVolume(second.overlay)
        self.assertEqual(int(labels[0].max()), 4)  # the empty slice is marked empty
        self.assertTrue(all(int(labels[k].max()) in (1, 2, 3) for k in range(1, 6)))
        self.assertTrue(np.allclose(slicer.util.arrayFromTableColumn(second.plot_table, "threshold_good"), 0.9))
        self.delayDisplay("Inference test passed")

    def test_MotionSSIM_background(self):
        """What Apply runs: the job in a child process (PythonSlicer), polled here, written on
        this thread."""
        if self._skippedWithoutTorch("background test"):
            return
        import time

        from MotionSSIMLib.bridge import node_jobs

        volume = self._phantomVolume()
        logic = MotionSSIMLogic()
        self.assertEqual(node_jobs.validate_settings(volume, 0.85, 0.6), [])
        self.assertTrue(node_jobs.validate_settings(volume, 0.6, 0.85))
        job = logic.startAssessment(volume, device="cpu")
        start = time.time()
        while not job.poll() and time.time() - start < 300:
            slicer.app.processEvents()  # the GUI thread stays free while the child predicts
            time.sleep(0.05)
        result = job.finish()
        self.assertIsNotNone(result)
        self.assertEqual(result.table.GetNumberOfRows(), 6)
        self.assertEqual(result.summary["device"], "cpu")
        logic.showResults(result)
        # a cancelled job writes nothing
        tables = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode")
        job = logic.startAssessment(volume, device="cpu")
        job.cancel()
        job.wait(300)
        self.assertIsNone(job.finish())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode"), tables)
        self.delayDisplay("Background assessment test passed")

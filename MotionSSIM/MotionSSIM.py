"""MotionSSIM: reference-free motion-artefact assessment of the loaded MR volume, slice by slice.

Thin Slicer glue: the panel (Resources/UI/MotionSSIM.ui, state in a parameter node), dependency
installation at first use, progress/cancel, and the views. The work is done by the engine
(MotionSSIMLib: inference, and MotionSSIMLib.scene for everything written into the scene).

Python console::

    logic = slicer.util.getModuleLogic("MotionSSIM")
    result = logic.process(slicer.util.getNode("MRHead"), device="cpu")
    print(result.summary["verdict"], result.summary["mean_ssim"])
"""

import importlib.util
import logging
import os
import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODEL_SOURCES = ["bundled model", "checkpoint file"]
ORIENTATIONS = ["auto", "axial", "coronal", "sagittal"]
DEVICES = ["auto", "cpu", "cuda"]
OVERLAY_STYLES = ["frame", "slice"]
# QSettings key where MotionSSIMTraining stores a newly trained model chosen by the user.
MODEL_SETTINGS_KEY = "MotionSSIM/ModelPath"
# Versions the engine is tested with; PyTorchUtils picks the build that matches the GPU driver.
TORCH_REQUIREMENT = ">=2.1"
TORCHVISION_REQUIREMENT = ">=0.16"


#
# Module
#


class MotionSSIM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MotionSSIM"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["MotionSSIM contributors"]
        self.parent.helpText = (
            "Predicts, for every slice of the selected MR volume, the SSIM the slice would have "
            "against a motion-free version of itself (no reference image needed), and classifies "
            "each slice as good (SSIM &gt;= 0.85), sufficient (0.60-0.85) or insufficient: "
            "re-scan (&lt; 0.60). Results: a table, a chart (click a point to jump to the slice), "
            "a coloured verdict overlay on the slice views and a volume verdict. "
            '<a href="https://github.com/motionssim/MotionSSIM">Documentation</a>.'
        )
        self.parent.acknowledgementText = (
            "Method: S. Chatterjee, A. Sciarra, M. Duennwald, et al., Automated SSIM Regression "
            "for Detection and Quantification of Motion Artefacts in Brain MR Images. "
            "Uses PyTorch (PyTorch extension), TorchIO and 3D Slicer."
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
        self._plotViews = []
        self._sliceObservations = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MotionSSIM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MotionSSIMLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.inputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.worstSlicesListWidget.connect("itemClicked(QListWidgetItem*)", self.onWorstSliceClicked)
        self.ui.modelPathLineEdit.nameFilters = ["MotionSSIM checkpoint (*.safetensors)"]

        self.initializeParameterNode()
        self.ui.torchInfoLabel.text = self.logic.torchInfo()

    def cleanup(self) -> None:
        self.removeObservers()
        self._removeViewConnections()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self._result = None
        self._removeViewConnections()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode and not firstVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolumeNode
        trained = qt.QSettings().value(MODEL_SETTINGS_KEY, "")
        if trained and os.path.isfile(trained) and str(self._parameterNode.modelPath) in ("", "."):
            self._parameterNode.modelPath = pathlib.Path(trained)
            self._parameterNode.modelSource = MODEL_SOURCES[1]

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        useFile = p.modelSource == MODEL_SOURCES[1]
        self.ui.modelPathLineEdit.enabled = useFile
        if not p.inputVolume:
            self.ui.applyButton.toolTip = "Select an input volume"
            self.ui.applyButton.enabled = False
        elif useFile and not p.modelPath.is_file():
            self.ui.applyButton.toolTip = "Select a checkpoint file (.safetensors)"
            self.ui.applyButton.enabled = False
        else:
            self.ui.applyButton.toolTip = "Predict the SSIM of every slice"
            self.ui.applyButton.enabled = True

    def onInputChanged(self, node) -> None:
        """Show earlier results of the newly selected volume (or clear the results area)."""
        from MotionSSIMLib import scene

        self._result = scene.find_result(node) if node else None
        self._showSummary()
        self._connectViews()

    def onApplyButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("MotionSSIM failed.", waitCursor=True):
            if not self.logic.ensureDependencies(askConfirmation=True):
                return
            self.ui.torchInfoLabel.text = self.logic.torchInfo()
            from MotionSSIMLib.inference import Cancelled

            dialog = slicer.util.createProgressDialog(
                labelText=f"Assessing {p.inputVolume.GetName()}...",
                windowTitle="MotionSSIM",
                maximum=100,
            )
            dialog.setCancelButtonText("Cancel")
            cancelled = []

            def progress(done, total):
                dialog.value = int(100 * done / max(total, 1))
                dialog.labelText = f"Assessing {p.inputVolume.GetName()}: slice {done} of {total}"
                slicer.app.processEvents()  # keeps the GUI alive and lets Cancel be clicked

            def cancel():
                slicer.app.processEvents()
                if dialog.wasCanceled:
                    cancelled.append(True)
                return bool(cancelled)

            try:
                self._result = self.logic.process(
                    p.inputVolume,
                    model=self._modelArgument(),
                    orientation=p.orientation,
                    device=p.device,
                    goodThreshold=p.goodThreshold,
                    sufficientThreshold=p.sufficientThreshold,
                    minForeground=p.minForeground,
                    overlayStyle=p.overlayStyle,
                    progress=progress,
                    cancel=cancel,
                )
            except Cancelled:
                slicer.util.showStatusMessage("MotionSSIM: cancelled, the scene is unchanged", 3000)
                return
            finally:
                dialog.close()
            self._connectViews()
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
        from MotionSSIMLib import scene

        rows = _rowsOfSlices(self._result, s.get("worst_slices", []))
        for row in rows:
            item = qt.QListWidgetItem(scene.row_text(self._result, row))
            item.setData(qt.Qt.UserRole, row)
            ui.worstSlicesListWidget.addItem(item)

    def onWorstSliceClicked(self, item) -> None:
        from MotionSSIMLib import scene

        if self._result is not None:
            scene.jump_to_row(self._result, int(item.data(qt.Qt.UserRole)))

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
        for name in layoutManager.sliceViewNames():
            sliceNode = layoutManager.sliceWidget(name).mrmlSliceNode()
            tag = sliceNode.AddObserver(vtk.vtkCommand.ModifiedEvent, self.onSliceModified)
            self._sliceObservations.append((sliceNode, tag))
        self.onSliceModified()

    def _removeViewConnections(self) -> None:
        for plotView in self._plotViews:
            plotView.disconnect("dataSelected(vtkStringArray*, vtkCollection*)", self.onDataSelected)
        self._plotViews = []
        for sliceNode, tag in self._sliceObservations:
            sliceNode.RemoveObserver(tag)
        self._sliceObservations = []

    def onDataSelected(self, seriesIDs, selections) -> None:
        """A point picked in the chart: move the slice views to that slice."""
        from MotionSSIMLib import scene

        if self._result is None:
            return
        for i in range(seriesIDs.GetNumberOfValues()):
            selection = selections.GetItemAsObject(i)
            if selection is None or selection.GetNumberOfTuples() == 0:
                continue
            row = scene.row_for_point(self._result, seriesIDs.GetValue(i), selection.GetValue(0))
            if row is not None:
                scene.jump_to_row(self._result, row)
                return

    def onSliceModified(self, caller=None, event=None) -> None:
        """Corner text 'slice k: SSIM x, class' in every view parallel to the assessed slices."""
        from MotionSSIMLib import scene

        layoutManager = slicer.app.layoutManager()
        if layoutManager is None or self._result is None:
            return
        for name in layoutManager.sliceViewNames():
            widget = layoutManager.sliceWidget(name)
            text = scene.view_text(self._result, widget.mrmlSliceNode().GetSliceToRAS()) or ""
            view = widget.sliceView()
            # The upper edge: DataProbe's slice annotations use the corners.
            view.cornerAnnotation().SetText(vtk.vtkCornerAnnotation.UpperEdge, text)
            view.scheduleRender()


def _formatNumber(value) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def _rowsOfSlices(result, sliceIndices) -> list:
    from MotionSSIMLib import scene

    # summary["worst_slices"]: [{"index": k, "ssim": x}, ...] (plain indices accepted too)
    rows = [
        scene.row_of_slice(result, int(item["index"] if isinstance(item, dict) else item))
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
        Returns MotionSSIMLib.scene.SceneResult (nodes + the engine's summary). Assessing the
        same volume again updates the same nodes.
        """
        import time

        from MotionSSIMLib import scene
        from MotionSSIMLib.classes import ClinicalThresholds

        if not inputVolume:
            raise ValueError("MotionSSIM: select an input volume")
        thresholds = ClinicalThresholds(good=goodThreshold, sufficient=sufficientThreshold)
        start = time.time()
        result = scene.assess_volume_node(
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
        logging.info(
            f"MotionSSIM: {inputVolume.GetName()}: {result.summary.get('verdict')} "
            f"({time.time() - start:.1f} s)"
        )
        if showResults:
            self.showResults(result)
        return result

    def showResults(self, result) -> None:
        """Chart in the layout next to the slice views; verdict overlay as the label layer."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:  # no main window (headless, testing without GUI)
            return
        slicer.modules.plots.logic().ShowChartInLayout(result.chart)
        slicer.util.setSliceViewerLayers(
            background=result.volume, label=result.overlay, labelOpacity=1.0, fit=False
        )

    # -- dependencies ---------------------------------------------------------------------

    @staticmethod
    def torchInfo() -> str:
        """'torch 2.x, CUDA 12.x: NVIDIA ...' or a hint that torch is not installed yet."""
        if importlib.util.find_spec("torch") is None:
            return "PyTorch not installed: it is offered on the first Apply."
        try:
            import torch
        except Exception as exc:  # a broken install must not break the panel
            return f"PyTorch cannot be imported: {exc}"
        if torch.cuda.is_available():
            return f"torch {torch.__version__}, CUDA {torch.version.cuda}: {torch.cuda.get_device_name(0)}"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return f"torch {torch.__version__}, Apple MPS"
        return f"torch {torch.__version__}, CPU only"

    @staticmethod
    def requirementsPath() -> str:
        return os.path.join(os.path.dirname(__file__), "Resources", "requirements.txt")

    def missingPackages(self) -> list:
        """Requirement lines of Resources/requirements.txt whose distribution is not installed."""
        import importlib.metadata
        import re

        missing = []
        with open(self.requirementsPath(), encoding="utf-8") as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if not line or line.startswith("-"):
                    continue
                name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]
                try:
                    importlib.metadata.version(name)
                except importlib.metadata.PackageNotFoundError:
                    missing.append(line)
        return missing

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install PyTorch (through the PyTorch extension) and the other packages on first use.

        Returns False when the user declines. Never touches Slicer's own numpy, SimpleITK, vtk.
        """
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(
                    "MotionSSIM needs PyTorch. Install the 'PyTorch' extension from the "
                    "Extensions Manager, restart Slicer and press Apply again."
                ) from None
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                    "MotionSSIM needs PyTorch, which is not installed yet. Install it now? "
                    "It is a large download (up to a few GB with GPU support) and may take "
                    "several minutes.",
                    "MotionSSIM: install PyTorch",
                ):
                    return False
                torch = torchLogic.installTorch(
                    askConfirmation=False,
                    torchVersionRequirement=TORCH_REQUIREMENT,
                    torchvisionVersionRequirement=TORCHVISION_REQUIREMENT,
                )
                if torch is None:
                    raise RuntimeError("PyTorch installation failed: see the Python console.")
        missing = self.missingPackages()
        if not missing:
            return True
        try:
            import slicer.packaging as packaging
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            # Slicer >= 5.13: asks, installs with a progress dialog, offers a restart if needed
            requirements = packaging.load_requirements(self.requirementsPath())
            try:
                packaging.pip_ensure(requirements, requester="MotionSSIM")
            except RuntimeError:  # declined
                return False
            return True
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            "MotionSSIM needs these Python packages, which are not installed yet:\n\n"
            + "\n".join(missing)
            + "\n\nInstall them now? (needs internet; Slicer's numpy, SimpleITK and vtk are "
            "not changed)",
            "MotionSSIM: install packages",
        ):
            return False
        slicer.util.pip_install(missing)
        return True


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
        from MotionSSIMLib import scene

        self.assertIsNone(scene.find_result(volume))
        self.delayDisplay("Parameter node test passed")

    def test_MotionSSIM_process(self):
        if importlib.util.find_spec("torch") is None:
            # Build machines have no PyTorch: the inference path is tested where it is installed.
            self.delayDisplay("PyTorch is not installed: inference test skipped")
            return
        import tempfile

        import torch

        from MotionSSIMLib.checkpoint import save_checkpoint
        from MotionSSIMLib.model import build_model

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

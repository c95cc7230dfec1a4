"""MotionSSIMTraining: train and evaluate MotionSSIM models from 3D Slicer.

Training runs in a separate process (PythonSlicer train.py ARGS: the same arguments as
`python -m MotionSSIMLib train`), so Slicer stays responsive. The panel follows the trainer's
OUT/log.csv with a timer (live loss chart), Stop creates OUT/stop (the trainer saves a resumable
state and exits; its whole process tree is ended if it does not within a minute), and on success
an evaluation report is made and the new model can be handed to the MotionSSIM module.

The process is started in a process group of its own and stopped as a tree
(MotionSSIMLib.processes): PythonSlicer is a launcher, and ending only the launcher would leave
the Python process training on.
"""

import logging
import os
import pathlib
import shutil
import sys
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

ARCHITECTURES = ["resnet18", "resnet101"]
DEVICES = ["auto", "cpu", "cuda"]
MODEL_SETTINGS_KEY = "MotionSSIM/ModelPath"  # read by the MotionSSIM module
STOP_TIMEOUT_S = 60  # after Stop: time the trainer gets to save its state before the tree is ended
KILL_GRACE_S = 10  # SIGTERM to the process group, then SIGKILL after this
POLL_INTERVAL_MS = 2000
# Parameter -> MotionSSIMLib.settings.TrainSettings field. The defaults below are that class's
# (Testing/test_settings.py checks them; the engine is imported lazily, so they are repeated).
PARAMETER_SETTINGS = {
    "architecture": "architecture",
    "contrastAugmentation": "contrast",
    "torchioShare": "p_torchio",
    "epochs": "epochs",
    "samplesPerEpoch": "samples_per_epoch",
    "batchSize": "batch_size",
    "learningRate": "lr",
    "device": "device",
}


#
# Module
#


class MotionSSIMTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MotionSSIM Training"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["MotionSSIM contributors"]
        self.parent.helpText = (
            "Trains a ResNet that predicts the SSIM of an MR slice against its motion-free "
            "version, with synthetic motion (TorchIO and a k-space line simulator) and contrast "
            "augmentation applied on the fly. Training runs in a separate process; it can be "
            "stopped and resumed. The trained model can be used by the MotionSSIM module."
        )
        self.parent.acknowledgementText = (
            "Method: S. Chatterjee, A. Sciarra, M. Duennwald, et al., Automated SSIM Regression "
            "for Detection and Quantification of Motion Artefacts in Brain MR Images."
        )


#
# Parameters
#


@parameterNodeWrapper
class MotionSSIMTrainingParameterNode:
    trainingData: pathlib.Path
    validationData: pathlib.Path
    outputFolder: pathlib.Path
    architecture: Annotated[str, Choice(ARCHITECTURES)] = "resnet18"
    contrastAugmentation: bool = True
    allSlices: bool = False
    torchioShare: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    epochs: Annotated[int, WithinRange(1, 100000)] = 2000
    samplesPerEpoch: Annotated[int, WithinRange(1, 10000000)] = 200
    batchSize: Annotated[int, WithinRange(1, 4096)] = 100
    learningRate: Annotated[float, WithinRange(0.0, 1.0)] = 0.001
    device: Annotated[str, Choice(DEVICES)] = "auto"
    resume: bool = False
    evaluateAfterTraining: bool = True
    evaluationSlices: Annotated[int, WithinRange(10, 1000000)] = 1000


def _isSet(path) -> bool:
    """An unset pathlib.Path parameter reads as '.'."""
    return bool(path) and str(path) not in ("", ".")


#
# Widget
#


class MotionSSIMTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)
        self._logMTime = None
        self._shownChartID = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MotionSSIMTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MotionSSIMTrainingLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.stopButton.connect("clicked(bool)", self.onStopButton)
        self.ui.useModelButton.connect("clicked(bool)", self.onUseModelButton)
        # data: a split file (.json/.csv) through the line edit's browse button, or a folder
        # through "Folder..." (a ctkPathLineEdit with Files|Dirs opens a file dialog only, in
        # which a folder cannot be chosen); output: a folder
        splitFilters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
        for lineEdit in (self.ui.trainingDataPathLineEdit, self.ui.validationDataPathLineEdit):
            lineEdit.filters = splitFilters
            lineEdit.nameFilters = ["Split file (*.json *.csv)", "All files (*)"]
        self.ui.outputFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.trainingDataFolderButton.connect(
            "clicked(bool)", lambda checked=False: self.onChooseFolder("trainingData"))
        self.ui.validationDataFolderButton.connect(
            "clicked(bool)", lambda checked=False: self.onChooseFolder("validationData"))
        self.initializeParameterNode()
        self._updateButtons()

    def cleanup(self) -> None:
        self.removeObservers()
        self._timer.stop()

    def onChooseFolder(self, parameterName: str) -> None:
        """A folder of volumes (flat, or with train/validation/test sub-folders) as data."""
        p = self._parameterNode
        if p is None:
            return
        current = getattr(p, parameterName)
        start = str(current) if _isSet(current) else ""
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), "Folder of volumes", start)
        if folder:
            setattr(p, parameterName, pathlib.Path(folder))

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self.logic.isRunning()
        p = self._parameterNode
        ready = p is not None and _isSet(p.outputFolder) and (p.resume or _isSet(p.trainingData))
        self.ui.startButton.enabled = ready and not running
        self.ui.stopButton.enabled = running
        self.ui.useModelButton.enabled = (
            not running and p is not None and self.logic.bestModelPath(p.outputFolder) is not None
        )
        self.ui.startButton.toolTip = (
            "Start training" if ready else "Choose the training data and an output folder"
        )

    def onStartButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the training.", waitCursor=True):
            import MotionSSIM

            motionLogic = MotionSSIM.MotionSSIMLogic()
            motionLogic.logCallback = self.ui.logTextEdit.appendPlainText
            if not MotionSSIM.ensureDependenciesWithConfirmation(motionLogic, "MotionSSIM Training"):
                return
            self.ui.logTextEdit.clear()
            self.ui.reportTextBrowser.clear()
            self._logMTime = None
            self.logic.startTraining(p)
            self.ui.progressBar.maximum = p.epochs
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Training started (the first epoch can take a while)..."
            self._timer.start()
        self._updateButtons()

    def onStopButton(self) -> None:
        self.logic.requestStop()
        self.ui.statusLabel.text = "Stopping: the trainer saves a resumable state..."
        self.ui.stopButton.enabled = False

    def onPoll(self) -> None:
        """Timer: new output lines, the live loss chart, progress, and the end of the process."""
        for line in self.logic.takeOutput():
            self.ui.logTextEdit.appendPlainText(line)
        p = self._parameterNode
        state = self.logic.poll()
        if p is not None:
            self._updateChart(p.outputFolder)
        if state["status"] == "running":
            return
        self._timer.stop()
        self.ui.statusLabel.text = state["message"]
        if state["status"] == "evaluated":
            self._showReport(state.get("report"))
        elif state["status"] == "trained" and p is not None and p.evaluateAfterTraining:
            started, message = self.logic.startEvaluation(p)
            self.ui.logTextEdit.appendPlainText(message)
            if started:
                self.ui.statusLabel.text = "Training done; evaluating the best model..."
                self._timer.start()
            else:
                self.ui.statusLabel.text = "Training finished; not evaluated: " + message
        self._updateButtons()

    def _updateChart(self, outputFolder) -> None:
        from MotionSSIMLib import training_chart

        logPath = os.path.join(str(outputFolder), "log.csv")
        if not os.path.isfile(logPath):
            return
        mtime = os.path.getmtime(logPath)
        if mtime == self._logMTime:
            return
        self._logMTime = mtime
        log = training_chart.read_training_log(logPath)
        if not log or not len(log.get("epoch", [])):
            return
        _, chart, _ = training_chart.write_training_chart(log, str(outputFolder))
        epoch = int(log["epoch"][-1])
        self.ui.progressBar.value = min(epoch, self.ui.progressBar.maximum)
        last = {k: log[k][-1] for k in ("train_loss", "val_loss", "val_mae") if k in log}
        self.ui.statusLabel.text = f"Epoch {epoch}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in last.items()
        )
        if slicer.app.layoutManager() is not None and self._shownChartID != chart.GetID():
            slicer.modules.plots.logic().ShowChartInLayout(chart)  # once: the user may re-arrange
            self._shownChartID = chart.GetID()

    def _showReport(self, reportPath) -> None:
        if not reportPath or not os.path.isfile(reportPath):
            return
        with open(reportPath, encoding="utf-8") as f:
            text = f.read()
        if hasattr(self.ui.reportTextBrowser, "setMarkdown"):
            self.ui.reportTextBrowser.setMarkdown(text)
        else:
            self.ui.reportTextBrowser.setPlainText(text)
        self.ui.reportCollapsibleButton.collapsed = False

    def onUseModelButton(self) -> None:
        path = self.logic.bestModelPath(self._parameterNode.outputFolder)
        if path is None:
            return
        self.logic.useModelInMotionSSIM(path)
        slicer.util.infoDisplay(
            f"The MotionSSIM module now uses:\n{path}", windowTitle="MotionSSIM Training"
        )


#
# Logic
#


class MotionSSIMTrainingLogic(ScriptedLoadableModuleLogic):
    """Starts, follows and stops the training and evaluation processes (one at a time)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._job = None  # MotionSSIMLib.processes.Job
        self._kind = None  # "train" or "evaluate"
        self._outputFolder = None
        self._stopRequested = False
        self._killTimer = None

    def getParameterNode(self):
        return MotionSSIMTrainingParameterNode(super().getParameterNode())

    # -- locations ------------------------------------------------------------------------

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's own Python (PythonSlicer), so the process sees the same packages."""
        found = shutil.which("PythonSlicer")
        if found:
            return found
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        candidate = os.path.join(os.path.dirname(sys.executable), name)
        return candidate if os.path.isfile(candidate) else sys.executable

    @staticmethod
    def trainScriptPath() -> str:
        """The headless train.py, in MotionSSIMTrainingScripts/ beside this file (source tree and
        installed extension alike): Slicer would load a .py beside the module file as a module."""
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "MotionSSIMTrainingScripts", "train.py")
        if not os.path.isfile(path):
            raise RuntimeError(f"MotionSSIM Training: {path} is missing: reinstall the extension")
        return path

    @staticmethod
    def engineFolder() -> str:
        """The folder holding the MotionSSIMLib package (put on the subprocess' PYTHONPATH)."""
        import MotionSSIMLib

        return os.path.dirname(os.path.dirname(os.path.abspath(MotionSSIMLib.__file__)))

    @staticmethod
    def bestModelPath(outputFolder):
        if not _isSet(outputFolder):
            return None
        path = os.path.join(str(outputFolder), "best.safetensors")
        return path if os.path.isfile(path) else None

    # -- processes ------------------------------------------------------------------------

    @staticmethod
    def trainSettings(p):
        """The parameter node as MotionSSIMLib.settings.TrainSettings (PARAMETER_SETTINGS); the
        progress bar is off: the panel follows log.csv instead."""
        from MotionSSIMLib.settings import TrainSettings

        values = {name: getattr(p, parameter) for parameter, name in PARAMETER_SETTINGS.items()}
        values["slices"] = "all" if p.allSlices else "central"
        return TrainSettings(**values, progress=False)

    def trainingArguments(self, p) -> list:
        from MotionSSIMLib.settings import train_arguments

        return train_arguments(
            self.trainSettings(p),
            out=str(p.outputFolder),
            data=str(p.trainingData) if _isSet(p.trainingData) else None,
            val_data=str(p.validationData) if _isSet(p.validationData) else None,
            resume=p.resume,
        )

    @staticmethod
    def evaluationArguments(p, checkpoint) -> list:
        """`evaluate` arguments: `checkpoint` on the test split of the training data."""
        from MotionSSIMLib.settings import EvaluateSettings, evaluate_arguments

        chosen = EvaluateSettings(n=p.evaluationSlices, device=p.device, progress=False)
        return evaluate_arguments(chosen, str(p.trainingData), [checkpoint],
                                  os.path.join(str(p.outputFolder), "evaluation"))

    def startTraining(self, p) -> None:
        os.makedirs(str(p.outputFolder), exist_ok=True)
        stopFile = os.path.join(str(p.outputFolder), "stop")
        if os.path.exists(stopFile):
            os.remove(stopFile)  # a stale request would stop the new run at once
        command = [self.pythonExecutable(), self.trainScriptPath(), *self.trainingArguments(p)]
        self._start(command, "train", str(p.outputFolder))

    def startEvaluation(self, p):
        """Evaluate best.safetensors on the held-out test split of the training data.

        Returns (started, message). Refused when the test split shares volumes with the
        training split (a plain folder of volumes puts every volume in every split): that
        would report figures on training data.
        """
        from MotionSSIMLib.errors import MotionSSIMError
        from MotionSSIMLib.evaluation import held_out_test_volumes

        best = self.bestModelPath(p.outputFolder)
        if best is None or not _isSet(p.trainingData):
            return False, "no best.safetensors or no training data to take the test split from"
        try:
            test = held_out_test_volumes(str(p.trainingData))
        except MotionSSIMError as exc:
            return False, str(exc)
        command = [self.pythonExecutable(), "-m", "MotionSSIMLib", "evaluate",
                   *self.evaluationArguments(p, best)]
        self._start(command, "evaluate", str(p.outputFolder))
        names = ", ".join(path.name for path in test[:20]) + (", ..." if len(test) > 20 else "")
        return True, f"Evaluating on {len(test)} held-out test volumes: {names}"

    def _start(self, command, kind, outputFolder) -> None:
        from MotionSSIMLib import processes

        if self.isRunning():
            raise RuntimeError("A training or evaluation process is already running")
        logging.info("MotionSSIMTraining: " + " ".join(command))
        # Slicer's start-up environment (as launchConsoleProcess uses) plus the engine folder;
        # PythonSlicer adds Slicer's own paths. UTF-8 output whatever the locale.
        env = dict(slicer.util.startupEnvironment())
        env.update({"PYTHONPATH": self.engineFolder(), "PYTHONUNBUFFERED": "1",
                    "PYTHONIOENCODING": "utf-8"})
        self._stopRequested = False
        self._kind = kind
        self._outputFolder = outputFolder
        # own process group, output read by a thread that decodes with replacement
        self._job = processes.start(command, env=env)

    def takeOutput(self) -> list:
        return self._job.take_lines() if self._job is not None else []

    def isRunning(self) -> bool:
        return self._job is not None and self._job.is_running()

    def poll(self) -> dict:
        """{'status': running|trained|stopped|failed|evaluated, 'message': ..., 'report': ...}."""
        if self._job is None:
            return {"status": "failed", "message": "Nothing is running."}
        code = self._job.poll()
        if code is None:
            return {"status": "running", "message": ""}
        if self._killTimer is not None:
            self._killTimer.stop()
            self._killTimer = None
        # the launcher is gone: make sure nothing it started is left (a crashed launcher)
        self._job.kill(grace_s=KILL_GRACE_S)
        kind = self._kind
        if kind == "evaluate":
            report = os.path.join(self._outputFolder, "evaluation", "report.md")
            if code == 0 and os.path.isfile(report):
                return {"status": "evaluated", "message": f"Evaluation report: {report}", "report": report}
            if self._stopRequested:
                return {"status": "stopped", "message": "Evaluation stopped."}
            return {"status": "failed", "message": f"Evaluation failed (exit status {code}): see the log."}
        if code == 0:
            return {"status": "trained", "message": "Training finished."}
        if code == 1 or self._stopRequested:
            return {
                "status": "stopped",
                "message": "Stopped. Tick 'Resume' and press Start to continue this run.",
            }
        return {"status": "failed", "message": f"Training failed (exit status {code}): see the log."}

    def requestStop(self) -> None:
        """Training: ask the trainer to checkpoint and exit (OUT/stop), and end the whole process
        tree if it has not within STOP_TIMEOUT_S. Evaluation: end the tree now."""
        if not self.isRunning():
            return
        self._stopRequested = True
        if self._kind != "train":
            self._job.kill(grace_s=KILL_GRACE_S)
            return
        with open(os.path.join(self._outputFolder, "stop"), "w", encoding="utf-8") as f:
            f.write("stop requested from MotionSSIMTraining\n")
        self._killTimer = qt.QTimer()
        self._killTimer.setSingleShot(True)
        self._killTimer.connect("timeout()", self._terminate)
        self._killTimer.start(STOP_TIMEOUT_S * 1000)

    def _terminate(self) -> None:
        if self.isRunning():
            logging.warning("MotionSSIMTraining: the trainer did not stop in time; ending it")
            # SIGTERM to the group first (the trainer still saves its state), then SIGKILL
            self._job.kill(grace_s=KILL_GRACE_S)

    def useModelInMotionSSIM(self, path) -> None:
        """Make `path` the MotionSSIM module's model (now, and as the default next time)."""
        qt.QSettings().setValue(MODEL_SETTINGS_KEY, str(path))
        try:
            motionLogic = slicer.util.getModuleLogic("MotionSSIM")
        except Exception:
            motionLogic = None
        if motionLogic is not None:
            parameters = motionLogic.getParameterNode()
            parameters.modelPath = pathlib.Path(path)
            parameters.modelSource = "checkpoint file"


#
# Test
#


class MotionSSIMTrainingTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MotionSSIMTraining_arguments()
        self.setUp()
        self.test_MotionSSIMTraining_chart()
        self.setUp()
        self.test_MotionSSIMTraining_short_run()

    def test_MotionSSIMTraining_arguments(self):
        logic = MotionSSIMTrainingLogic()
        p = logic.getParameterNode()
        p.trainingData = pathlib.Path(slicer.app.temporaryPath) / "data"
        p.outputFolder = pathlib.Path(slicer.app.temporaryPath) / "out"
        p.contrastAugmentation = False
        args = logic.trainingArguments(p)
        self.assertIn("--no-contrast", args)
        self.assertEqual(args[args.index("--architecture") + 1], "resnet18")
        p.resume = True
        self.assertIn("--resume", logic.trainingArguments(p))
        self.assertTrue(os.path.isfile(logic.trainScriptPath()))
        self.delayDisplay("Argument test passed")

    def test_MotionSSIMTraining_chart(self):
        import tempfile

        from MotionSSIMLib import training_chart

        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "log.csv"), "w", encoding="utf-8") as f:
                f.write("epoch,step,train_loss,val_loss,val_mae,val_residual_sd,lr,samples_per_s,elapsed_s\n")
                f.write("1,2,0.09,0.08,0.2,0.1,0.001,50,3\n2,4,0.05,nan,0.15,0.1,0.001,50,6\n")
            log = training_chart.read_training_log(os.path.join(folder, "log.csv"))
            table, chart, series = training_chart.write_training_chart(log, folder)
            self.assertEqual(table.GetNumberOfRows(), 2)
            self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 2)
        self.delayDisplay("Chart test passed")

    def test_MotionSSIMTraining_short_run(self):
        """Two volumes made in the scene, saved, trained on for one tiny epoch (if torch)."""
        import importlib.util
        import tempfile
        import time

        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("PyTorch is not installed: training run skipped")
            return
        import numpy as np

        folder = tempfile.mkdtemp()
        os.makedirs(os.path.join(folder, "data"))
        for n in range(2):
            shape = (24, 64, 64)
            grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
            array = np.where(sum(g**2 for g in grids) < 0.6, 100.0 + 30 * n + 20 * grids[2], 0.0)
            volume = slicer.util.addVolumeFromArray(array.astype("float32"), name=f"train{n}")
            slicer.util.saveNode(volume, os.path.join(folder, "data", f"train{n}.nii.gz"))
        logic = MotionSSIMTrainingLogic()
        p = logic.getParameterNode()
        p.trainingData = pathlib.Path(folder) / "data"
        p.outputFolder = pathlib.Path(folder) / "out"
        p.epochs, p.samplesPerEpoch, p.batchSize, p.device = 1, 4, 2, "cpu"
        logic.startTraining(p)
        start = time.time()
        while logic.isRunning() and time.time() - start < 600:
            slicer.app.processEvents()
            time.sleep(0.5)
        state = logic.poll()
        self.assertEqual(state["status"], "trained", "\n".join(logic.takeOutput()[-20:]))
        self.assertIsNotNone(logic.bestModelPath(p.outputFolder))
        self.delayDisplay("Training run test passed")

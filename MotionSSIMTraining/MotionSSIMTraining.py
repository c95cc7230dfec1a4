"""MotionSSIMTraining: train and evaluate MotionSSIM models from 3D Slicer.

Training runs in a separate process (PythonSlicer train.py ARGS: the same arguments as
`python -m MotionSSIMLib train`), so Slicer stays responsive. The panel follows the trainer's
OUT/log.csv with a timer (live loss chart), Stop creates OUT/stop (the trainer saves a resumable
state and exits; its whole process tree is ended if it does not within a minute), and on success
an evaluation report is made and the new model can be handed to the MotionSSIM module.

The process is started in a process group of its own and stopped as a tree
(MotionSSIMLib.bridge.processes): PythonSlicer is a launcher, and ending only the launcher would
leave the Python process training on. Its output goes into a file in the output folder that the timer
reads (no reader thread: Slicer's idle main thread holds the GIL). Every stop is escalated from
the timer (SIGTERM, then SIGKILL after a grace time): the GUI thread never sleeps. The trainer
holds OUT/train.lock (MotionSSIMLib.training.folder_lock): a second trainer on the folder is
refused.
The run's folders and settings are those of Start (RunSettings), whatever the fields show later;
the inputs are locked while it runs, and it is stopped when the module is cleaned up or Slicer
quits.
"""

import logging
import os
import pathlib
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
KILL_GRACE_S = 10  # SIGTERM to the process group, then SIGKILL (from the timer) after this
POLL_INTERVAL_MS = 2000
FAILURE_LINES = 8  # the last output lines shown when a process fails
# Parameter -> MotionSSIMLib.base.settings.TrainSettings field. The defaults below are that class's
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
        self.parent.dependencies = ["MotionSSIM"]  # the engine and the shared helpers
        self.parent.contributors = ["MotionSSIM maintainers (SlicerMotionSSIM project)"]
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
        import MotionSSIM  # the path-field binding is shared with the assessment module

        self._pathFields = MotionSSIM.PathFields({
            "trainingData": self.ui.trainingDataPathLineEdit,
            "validationData": self.ui.validationDataPathLineEdit,
            "outputFolder": self.ui.outputFolderPathLineEdit})
        self.ui.trainingDataFolderButton.connect(
            "clicked(bool)", lambda checked=False: self.onChooseFolder("trainingData"))
        self.ui.validationDataFolderButton.connect(
            "clicked(bool)", lambda checked=False: self.onChooseFolder("validationData"))
        self.initializeParameterNode()
        self._updateButtons()

    def cleanup(self) -> None:
        """The module goes away (Slicer quits): a running process is stopped, not orphaned."""
        self.logic.shutdown()
        self._timer.stop()
        self.setParameterNode(None)
        self.removeObservers()

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
        self.initializeParameterNode()  # the same node: kept connected (setParameterNode)

    def exit(self) -> None:
        # The GUI stays connected while the module is not shown: reconnecting on enter() would
        # reset the comboboxes on Slicer 5.8 (issue 7545; resnet101 would become resnet18).
        pass

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        # node IDs start again in the next scene: the chart is written and shown anew there
        self._shownChartID = None
        self._logMTime = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        """Connect the GUI once per parameter node (a new one only after a scene close)."""
        import MotionSSIM

        if MotionSSIM.sameParameterNode(inputParameterNode, self._parameterNode):
            self._updateButtons()
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(
                MotionSSIM.parameterWidgets(self.ui, skip=self._pathFields.widgets))
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._pathFields.setNode(self._parameterNode)
        if self._parameterNode:
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        self._pathFields.update()
        running = self.logic.isRunning()
        p = self._parameterNode
        ready = p is not None and _isSet(p.outputFolder) and (p.resume or _isSet(p.trainingData))
        # the inputs are the running job's (RunSettings): locked until it ends
        for widget in (self.ui.dataCollapsibleButton, self.ui.trainingCollapsibleButton):
            widget.enabled = not running
        self.ui.startButton.enabled = ready and not running
        self.ui.stopButton.enabled = running and not self.logic.stopRequested
        folder = self.logic.run.outputFolder if self.logic.run is not None else (
            p.outputFolder if p is not None else None)
        self.ui.useModelButton.enabled = (
            not running and self.logic.bestModelPath(folder) is not None
        )
        self.ui.startButton.toolTip = (
            "Start training" if ready else "Choose the training data and an output folder"
        )

    def onStartButton(self) -> None:
        p = self._parameterNode
        # no wait cursor: the installation and restart questions must look clickable
        with slicer.util.tryWithErrorDisplay("Could not start the training."):
            import MotionSSIM

            motionLogic = MotionSSIM.MotionSSIMLogic()
            motionLogic.logCallback = self.ui.logTextEdit.appendPlainText
            if not MotionSSIM.ensureDependenciesWithConfirmation(motionLogic, "MotionSSIM Training"):
                return
            self.ui.logTextEdit.clear()
            self.ui.reportTextBrowser.clear()
            self._logMTime = None
            self.logic.startTraining(p)  # refused when a live trainer holds the folder
            self.ui.progressBar.maximum = p.epochs
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Training started (the first epoch can take a while)..."
            self._timer.start()
        self._updateButtons()

    def onStopButton(self) -> None:
        self.logic.requestStop()
        self.ui.statusLabel.text = "Stopping: the trainer saves a resumable state..."
        self._updateButtons()

    def onPoll(self) -> None:
        """Timer: new output lines, the live loss chart, progress, and the end of the process."""
        for line in self.logic.takeOutput():
            self.ui.logTextEdit.appendPlainText(line)
        state = self.logic.poll()  # never blocks: a stop is escalated from here
        run = self.logic.run
        if run is not None:
            self._updateChart(run.outputFolder)
        if state["status"] in ("running", "stopping"):
            return
        self._timer.stop()
        self.ui.statusLabel.text = state["message"]
        if state["status"] == "failed" and state.get("lines"):
            self.ui.logTextEdit.appendPlainText("Last lines of the failed process:")
            for line in state["lines"]:
                self.ui.logTextEdit.appendPlainText("  " + line)
        if state["status"] == "evaluated":
            self._showReport(state.get("report"))
        elif state["status"] == "trained" and run is not None and run.evaluateAfterTraining:
            started, message = self.logic.startEvaluation()
            self.ui.logTextEdit.appendPlainText(message)
            if started:
                self.ui.statusLabel.text = "Training done; evaluating the best model..."
                self._timer.start()
            else:
                self.ui.statusLabel.text = "Training finished; not evaluated: " + message
        self._updateButtons()

    def _updateChart(self, outputFolder) -> None:
        from MotionSSIMLib.bridge import training_chart

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
        browser = self.ui.reportTextBrowser
        # the report's images are PNG files beside it, named relative to it
        browser.setSearchPaths([os.path.dirname(os.path.abspath(reportPath))])
        if hasattr(browser, "setMarkdown"):
            browser.setMarkdown(text)
        else:
            browser.setPlainText(text)
        self.ui.reportCollapsibleButton.collapsed = False

    def onUseModelButton(self) -> None:
        run = self.logic.run
        folder = run.outputFolder if run is not None else self._parameterNode.outputFolder
        path = self.logic.bestModelPath(folder)
        if path is None:
            return
        self.logic.useModelInMotionSSIM(path)
        slicer.util.infoDisplay(
            f"The MotionSSIM module now uses:\n{path}", windowTitle="MotionSSIM Training"
        )


#
# Logic
#


class RunSettings:
    """What a training run was started with (its folders and the evaluation settings),
    copied from the parameter node at Start: the panel follows these, not the fields."""

    def __init__(self, p) -> None:
        self.outputFolder = str(p.outputFolder)
        self.trainingData = str(p.trainingData) if _isSet(p.trainingData) else None
        self.evaluateAfterTraining = bool(p.evaluateAfterTraining)
        self.evaluationSlices = int(p.evaluationSlices)
        self.device = str(p.device)


class MotionSSIMTrainingLogic(ScriptedLoadableModuleLogic):
    """Starts, follows and stops the training and evaluation processes (one at a time)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._job = None  # MotionSSIMLib.bridge.processes.Job
        self._kind = None  # "train" or "evaluate"
        self.run = None  # RunSettings of the current (or last) run
        self.stopRequested = False
        self._stopDeadline = None  # time.monotonic() after which Stop ends the tree
        self._exitCode = None
        self._pending = []  # output lines read, not yet taken
        self._lastLines = []
        self._quitConnected = False

    def getParameterNode(self):
        return MotionSSIMTrainingParameterNode(super().getParameterNode())

    # -- locations ------------------------------------------------------------------------

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's own Python (PythonSlicer), so the process sees the same packages."""
        from MotionSSIMLib.bridge import processes

        return processes.python_executable()

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
    def bestModelPath(outputFolder):
        if not _isSet(outputFolder):
            return None
        path = os.path.join(str(outputFolder), "best.safetensors")
        return path if os.path.isfile(path) else None

    # -- processes ------------------------------------------------------------------------

    @staticmethod
    def trainSettings(p):
        """The parameter node as MotionSSIMLib.base.settings.TrainSettings (PARAMETER_SETTINGS); the
        progress bar is off: the panel follows log.csv instead."""
        from MotionSSIMLib.base.settings import TrainSettings

        values = {name: getattr(p, parameter) for parameter, name in PARAMETER_SETTINGS.items()}
        values["slices"] = "all" if p.allSlices else "central"
        return TrainSettings(**values, progress=False)

    def trainingArguments(self, p) -> list:
        from MotionSSIMLib.base.settings import train_arguments

        return train_arguments(
            self.trainSettings(p),
            out=str(p.outputFolder),
            data=str(p.trainingData) if _isSet(p.trainingData) else None,
            val_data=str(p.validationData) if _isSet(p.validationData) else None,
            resume=p.resume,
        )

    @staticmethod
    def evaluationArguments(run, checkpoint) -> list:
        """`evaluate` arguments: `checkpoint` on the test split of the run's training data."""
        from MotionSSIMLib.base.settings import EvaluateSettings, evaluate_arguments

        chosen = EvaluateSettings(n=run.evaluationSlices, device=run.device, progress=False)
        return evaluate_arguments(chosen, run.trainingData, [checkpoint],
                                  os.path.join(run.outputFolder, "evaluation"))

    def startTraining(self, p) -> None:
        from MotionSSIMLib.base.errors import InputError
        from MotionSSIMLib.training import folder_lock

        if self.isRunning():
            raise RuntimeError("A training or evaluation process is already running")
        who = folder_lock.holder(str(p.outputFolder))
        if who is not None:  # e.g. a trainer left running by an earlier Slicer session
            raise InputError(f"{p.outputFolder}: a training ({who}) is already running in this "
                             "folder; stop it first, or choose another output folder")
        os.makedirs(str(p.outputFolder), exist_ok=True)
        stopFile = os.path.join(str(p.outputFolder), "stop")
        if os.path.exists(stopFile):
            os.remove(stopFile)  # a stale request would stop the new run at once
        command = [self.pythonExecutable(), self.trainScriptPath(), *self.trainingArguments(p)]
        self.run = RunSettings(p)
        self._start(command, "train")

    def startEvaluation(self):
        """Evaluate the run's best.safetensors on the held-out test split of its training data.

        Returns (started, message). Refused when the test split shares volumes with the
        training split (a plain folder of volumes puts every volume in every split): that
        would report figures on training data.
        """
        from MotionSSIMLib.base.errors import MotionSSIMError
        from MotionSSIMLib.training.evaluation import held_out_test_volumes

        run = self.run
        best = self.bestModelPath(run.outputFolder) if run is not None else None
        if best is None or not run.trainingData:
            return False, "no best.safetensors or no training data to take the test split from"
        try:
            test = held_out_test_volumes(run.trainingData)
        except MotionSSIMError as exc:
            return False, str(exc)
        command = [self.pythonExecutable(), "-m", "MotionSSIMLib", "evaluate",
                   *self.evaluationArguments(run, best)]
        self._start(command, "evaluate")
        names = ", ".join(path.name for path in test[:20]) + (", ..." if len(test) > 20 else "")
        return True, f"Evaluating on {len(test)} held-out test volumes: {names}"

    def _start(self, command, kind) -> None:
        from MotionSSIMLib.bridge import processes

        if self.isRunning():
            raise RuntimeError("A training or evaluation process is already running")
        logging.info("MotionSSIMTraining: " + " ".join(command))
        # Slicer's start-up environment (as launchConsoleProcess uses) plus the engine folder;
        # PythonSlicer adds Slicer's own paths. UTF-8 output whatever the locale.
        env = processes.child_environment(slicer.util.startupEnvironment())
        self.stopRequested = False
        self._stopDeadline = None
        self._exitCode = None
        self._pending = []
        self._lastLines = []
        self._kind = kind
        # own process group; output into a file in the output folder, read by the timer
        self._job = processes.start(
            command, env=env, log_path=os.path.join(self.run.outputFolder, f"console_{kind}.log"))
        if not self._quitConnected:  # Slicer quits: the trainer saves its state and exits
            slicer.app.connect("aboutToQuit()", self.shutdown)
            self._quitConnected = True

    def _collect(self) -> None:
        if self._job is not None:
            lines = self._job.take_lines()
            self._pending += lines
            self._lastLines = (self._lastLines + lines)[-FAILURE_LINES:]

    def takeOutput(self) -> list:
        """The process's output lines since the last call."""
        self._collect()
        lines, self._pending = self._pending, []
        return lines

    def isRunning(self) -> bool:
        """A process of this logic is running, or its tree is still being stopped."""
        return self._job is not None and self._exitCode is None

    def poll(self) -> dict:
        """{'status': running|stopping|trained|stopped|failed|evaluated, 'message': ...,
        'report': ..., 'lines': the last output lines of a failure}. Never blocks: after a Stop
        it ends the tree (SIGKILL) once the grace time is over; after the launcher's exit it
        waits (in later calls) until nothing of the tree is left."""
        import time

        from MotionSSIMLib.training.training_cli import EXIT_STOPPED

        if self._job is None:
            return {"status": "failed", "message": "Nothing is running."}
        if self._stopDeadline is not None and time.monotonic() >= self._stopDeadline:
            logging.warning("MotionSSIMTraining: the trainer did not stop in time; ending it")
            self._stopDeadline = None
            self._job.stop(KILL_GRACE_S)  # SIGTERM (it still saves), SIGKILL from step()
        code = self._job.poll()
        if code is None:
            self._job.step()
            return {"status": "stopping" if self.stopRequested else "running", "message": ""}
        self._job.stop(KILL_GRACE_S)  # the launcher is gone: nothing it started may stay
        if not self._job.step():
            return {"status": "stopping", "message": ""}
        self._collect()
        self._exitCode = code
        self._stopDeadline = None
        run = self.run
        if self._kind == "evaluate":
            report = os.path.join(run.outputFolder, "evaluation", "report.md")
            if code == 0 and os.path.isfile(report):
                return {"status": "evaluated", "message": f"Evaluation report: {report}", "report": report}
            if self.stopRequested:
                return {"status": "stopped", "message": "Evaluation stopped."}
            return {"status": "failed", "lines": list(self._lastLines),
                    "message": f"Evaluation failed (exit status {code}): see the log."}
        if code == 0:
            return {"status": "trained", "message": "Training finished."}
        if code == EXIT_STOPPED or (self.stopRequested and code < 0):  # < 0: ended by a signal
            return {
                "status": "stopped",
                "message": "Stopped. Tick 'Resume' and press Start to continue this run.",
            }
        return {"status": "failed", "lines": list(self._lastLines),
                "message": f"Training failed (exit status {code}): see the last lines below."}

    def requestStop(self) -> None:
        """Training: ask the trainer to checkpoint and exit (OUT/stop); poll() ends the whole
        tree if it has not within STOP_TIMEOUT_S. Evaluation: SIGTERM now, SIGKILL from poll()
        after KILL_GRACE_S. Returns at once."""
        import time

        if not self.isRunning():
            return
        self.stopRequested = True
        if self._kind != "train":
            self._job.stop(KILL_GRACE_S)
            return
        with open(os.path.join(self.run.outputFolder, "stop"), "w", encoding="utf-8") as f:
            f.write("stop requested from MotionSSIMTraining\n")
        self._stopDeadline = time.monotonic() + STOP_TIMEOUT_S

    def shutdown(self) -> None:
        """The module is cleaned up or Slicer quits: SIGTERM to the tree now (the trainer saves
        a resumable state, then exits by itself; it runs in its own session and would otherwise
        train on, holding its folder). Returns at once."""
        if self.isRunning() and self._job.poll() is None:
            self.stopRequested = True
            self._job.interrupt()
            logging.info("MotionSSIMTraining: stopping the running process (Slicer quits)")

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

        from MotionSSIMLib.bridge import training_chart

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
        state = logic.poll()
        while state["status"] in ("running", "stopping") and time.time() - start < 600:
            slicer.app.processEvents()
            time.sleep(0.5)
            state = logic.poll()
        self.assertEqual(state["status"], "trained", "\n".join(logic.takeOutput()[-20:]))
        self.assertIsNotNone(logic.bestModelPath(p.outputFolder))
        self.delayDisplay("Training run test passed")

"""The Slicer bridge: everything between the engine and 3D Slicer. The only wing that imports
slicer, qt, ctk or vtk (and of those only slicer and vtk: MRML and array helpers, no widgets).

Holds: nodes (volume nodes as engine Volumes, node bookkeeping), volume_results and
series_results (assessments written into the scene, and the interaction with them), node_jobs
(assess a node at once or beside the GUI), jobs (the runners: a thread or a child process),
job_files and assess_child (what the child process reads and writes, and the child itself),
processes (child processes stopped as a whole), dependencies (what Slicer must install),
training_chart (the Training module's live loss chart).

May import: base, imaging, assessment.
"""

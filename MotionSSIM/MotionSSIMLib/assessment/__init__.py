"""Assessment: a trained model predicts each slice's SSIM, and volumes get a verdict.

Holds: model (the networks), checkpoint (safetensors files, nothing unpickled), devices (where
torch runs), inference (predict_slices, assess_volume, test-time views, uncertainty), frames
(4D series assessed frame by frame), classes (clinical and N-class schemes), results
(Assessment and SliceRecord: plain data, readable without torch), summary (a volume's verdict
and summary from its slices, torch-free), report (CSV, JSON and PNG per
input), lines (the command line's one-line messages).

May import: base, imaging.
"""

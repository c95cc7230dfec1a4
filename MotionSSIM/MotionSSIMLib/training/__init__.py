"""Training and evaluation: models trained on on-the-fly corrupted slices, and evaluated with
the paper's protocol.

Holds: data (volume lists, splits, cache, clean slices), trainer (the loop), run_state (one
run's state, state.pt and its files), train_support (RNG state, atomic files, stop requests,
torch.distributed), evaluation with evaluation_figures and evaluation_report (the test
protocol, its figures and files), invariance (label and prediction across matrices),
uncertainty_head (the second output, fitted on a frozen backbone), folder_lock (one trainer per folder), training_cli (the train and evaluate commands).

May import: base, imaging, assessment, simulation.
"""

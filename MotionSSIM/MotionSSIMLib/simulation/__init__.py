"""Simulation: what scanners and moving heads do to a clean slice, and the SSIM label.

Holds: motion (every motion family on one batch: the registry), motion_base (what the families
share), kspace_motion and tio_motion (the paper's two simulators), scanner_motion (five more
families: trajectories, orderings, EPI, through-plane, moves), augment (noise, resolution and
storage stages), ssim (the label: skimage's SSIM in batched torch), pipeline (corrupt_batch:
contrast, acquisition, motion and label for a batch, seeded by its key).

May import: base, imaging.
"""

"""Synthesis: synthetic head MR subjects from the MNI152 template (the SynthSeg idea).

Holds one module per stage: anatomy (the head model, anatomical changes, deformation),
contrast (tissue intensities, the clean image), acquisition (plane, voxel size, matrix,
reconstruction, bias field, noise), subject (the stages in order: synth_subject), writing
(seeded data sets on disk: write_dataset).

May import: base, imaging.
"""

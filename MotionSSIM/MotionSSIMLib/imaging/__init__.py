"""Imaging: reading volumes from disk and cutting them into model inputs.

Holds: io (every reader: NIfTI, NRRD, MetaImage, DICOM, NPY, 2D images; 4D series), checks
(sizes on the header, values, library output captured), integrity (regular files, compressed
data verified), dicom and dicom_header (DICOM folders, parsed without pydicom), series (4D
frames and their selection), geometry (volumes, anatomical slicing, the model-input fit),
intensity and clahe (min-max normalisation and the paper's contrast augmentations).

May import: base.
"""

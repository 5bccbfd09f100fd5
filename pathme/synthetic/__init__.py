"""Synthetic inputs with known content, made by the real writers: pyramidal slides (tifffile; the demo cohort's
slides are written with them), DICOM WSI series converted from slides (wsidicomizer) and region stores of random
features (the fixtures of tests and benchmarks of the stages after extraction). Nothing here reads a real
cohort."""

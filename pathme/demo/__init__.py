"""The demo and its inputs: the demo cohort generator, the sample data shipped in wheels, and the end-to-end
walkthrough behind ``pathme demo`` (synthetic slides and stores: :mod:`pathme.synthetic`).

Nothing here is used by training or inference on real cohorts; the datasets those read live in ``pathme.data``.
"""

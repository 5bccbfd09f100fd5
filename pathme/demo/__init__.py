"""The demo and its inputs: the demo cohort generator, the sample data shipped in wheels, synthetic slides and
region stores for tests and benchmarks, and the end-to-end walkthrough behind ``pathme demo``.

Nothing here is used by training or inference on real cohorts; the datasets those read live in ``pathme.data``.
"""

"""The input side of a run: the slide manifest every stage reads (:mod:`.manifest`) and the cohort built from a GDC
(TCGA) download (:mod:`.gdc`): which slides, of which patients, with which labels. Training data read from stores
lives in :mod:`pathme.data`."""

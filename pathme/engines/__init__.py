"""The runs: feature extraction over a cohort (:mod:`.extraction`), distillation with its EMA teacher
(:mod:`.distill_workflow`), region tokens (:mod:`.embed`), MIL training and prediction (:mod:`.mil_workflow`,
:mod:`.mil_predict`), embeddings and the linear probe, with the Ignite engines, schedules and handlers they use."""

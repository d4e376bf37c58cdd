"""Layer 8, pipeline: one run end to end (`run.run_finetune`: the recipe phase by phase), its assembly
(`assemble.prepare_run`), its record and resume policy (`record`), and k-fold runs (`kfold`)."""

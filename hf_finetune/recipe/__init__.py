"""The recipe: measure the data (`measure`), let the advisor pick the fine-tuning recipe with a reason per choice
(`advisor`), turn the plan into the run's arguments without writing the caller's (`resolve`), and everything between
loading the model and building the trainer: feature pass, baseline, plan and head initialisation (`prepare`)."""

"""Evaluation: the metrics of model selection and the one-time test report (`metrics`), plots drawn from a run's
records (`plots`), and the folds and confidence interval of k-fold runs (`kfold`)."""

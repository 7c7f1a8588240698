"""The jobs, side by side: ``train.py`` (train_job), ``evaluate.py`` (evaluate_job), ``classical.py``
(classical_job, no Lightning), and ``finish.py`` (choose on validation, test once, write the record)."""

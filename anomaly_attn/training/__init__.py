"""One training job: the per-job pipeline, the LightningModule, losses, callbacks, checkpoint I/O, speed
options and stop signals. Kept import-free so that ``training.interruption`` stays torch-free."""

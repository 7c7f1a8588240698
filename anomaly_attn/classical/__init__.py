"""Classical image-level detectors (k-NN, OC-SVM, ...) fit on training images only; run by
``python -m anomaly_attn.classical``."""

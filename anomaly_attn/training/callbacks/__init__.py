"""Lightning callbacks: visualization of anomaly maps, training throughput, random states in checkpoints,
last.ckpt on a stop signal."""

from anomaly_attn.training.callbacks.rng_state import RngStateCheckpoint
from anomaly_attn.training.callbacks.signal_checkpoint import CheckpointOnSignal
from anomaly_attn.training.callbacks.timing import TrainingThroughput
from anomaly_attn.training.callbacks.visualization import AnomalyMapVisualizer

__all__ = ["AnomalyMapVisualizer", "CheckpointOnSignal", "RngStateCheckpoint", "TrainingThroughput"]

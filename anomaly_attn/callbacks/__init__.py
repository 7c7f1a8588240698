"""Lightning callbacks: visualization of anomaly maps, training throughput, random states in checkpoints."""

from anomaly_attn.callbacks.rng_state import RngStateCheckpoint
from anomaly_attn.callbacks.timing import TrainingThroughput
from anomaly_attn.callbacks.visualization import AnomalyMapVisualizer

__all__ = ["AnomalyMapVisualizer", "RngStateCheckpoint", "TrainingThroughput"]

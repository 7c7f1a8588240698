"""Lightning callbacks: visualization of anomaly maps, training throughput."""

from anomaly_attn.callbacks.timing import TrainingThroughput
from anomaly_attn.callbacks.visualization import AnomalyMapVisualizer

__all__ = ["AnomalyMapVisualizer", "TrainingThroughput"]

"""Behaviour on the side of training: monitors that log what a user watches."""

from ssl_siamese.callbacks.collapse import CollapseMonitor
from ssl_siamese.callbacks.throughput import ThroughputMonitor

__all__ = ["CollapseMonitor", "ThroughputMonitor"]

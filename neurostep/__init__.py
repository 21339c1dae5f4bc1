"""neurostep: spiking and attention-free architectures on one recurrent-step engine."""

__version__ = "0.1.0"

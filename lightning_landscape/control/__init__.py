"""Actions on training: the weight-decay controller."""

from lightning_landscape.control.weight_decay import WeightDecayController

__all__ = ["WeightDecayController"]

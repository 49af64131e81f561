"""Figures rendered off-screen (matplotlib Agg) into HWC uint8 arrays for TensorBoard images."""

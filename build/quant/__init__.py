"""Quantization: FP8, W8A16, W4A16-AWQ formats, calibration, KV cache scales."""

"""Quantization: FP8, W8A16, W4A16-AWQ formats, calibration, KV cache scales.

`config` holds the one `QuantConfig` (config.json's `quantization` block), `quantizer` the
converter transform, `pipeline` what `fathom convert --precision ...` runs before converting.
"""

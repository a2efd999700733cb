"""Fake `tensorrt_llm.bindings`: only the `executor` submodule (the C++ executor API) exists."""

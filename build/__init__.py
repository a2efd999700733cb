"""fathom.build: read Hugging Face Qwen2 checkpoints and write TensorRT-LLM checkpoints."""

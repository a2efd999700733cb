"""fathom.engine: plan capacity and build TensorRT-LLM engines from fathom checkpoints."""

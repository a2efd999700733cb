"""Deployment beyond fathom's own processes, prepared from an engine's manifest (fathom-engine.json):
Triton Inference Server model repositories, trtllm-serve commands, MPI launch lines, the container."""

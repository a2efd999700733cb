"""`fathom eval`: task accuracy with the model card's protocol (pass@1, pass@k, cons@k), on any
executor or OpenAI-compatible endpoint."""

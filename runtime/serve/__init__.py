"""`fathom serve`: an OpenAI-compatible HTTP server over any fathom executor.

`engine` (one thread owns the executor; requests join its continuous batching), `protocol`
(request models and OpenAI-style errors), `reasoning` (the `<think>` split while streaming),
`choices` (one output's text, stop strings, log-probs and usage), `metrics` (Prometheus),
`app` (FastAPI routes, auth, limits), `runner` (uvicorn with a draining shutdown).
"""

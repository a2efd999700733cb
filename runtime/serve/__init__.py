"""`fathom serve`: an OpenAI-compatible HTTP server over any fathom executor.

`engine` (one thread owns the executor; requests join its continuous batching), `protocol`
(request models and OpenAI-style errors), `generation` (a request's choices, built on
`fathom.runtime.choices` and `fathom.runtime.reasoning`), `metrics` (Prometheus),
`app` (FastAPI routes, auth, limits), `runner` (uvicorn with a draining shutdown).
"""

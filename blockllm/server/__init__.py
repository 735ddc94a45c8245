"""OpenAI-compatible HTTP API over the engine (FastAPI + uvicorn)."""

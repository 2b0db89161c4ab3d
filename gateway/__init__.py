"""The connbridge HTTP and WebSocket gateway (FastAPI)."""

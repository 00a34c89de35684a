"""Pure ASGI middleware (no per-request task or body buffering): request id, metrics, body size limit."""

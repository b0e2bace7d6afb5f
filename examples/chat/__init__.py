"""The README's WebSocket chat, on Starlette + uvicorn over ``redismpx_anyio``.

``python -m examples.chat`` runs the app against a Redis you already have;
``scripts/demo`` also sets everything up and starts a Redis when none answers.
"""

"""The chat demo on trio: examples/chat's page and protocol, on ``redismpx_trio`` and
trio-websocket, with no anyio, asyncio or Starlette.

``python -m examples.chat_trio`` runs it against a Redis you already have;
``python -m examples.chat_trio --start-redis`` also starts a Redis when none answers.
"""

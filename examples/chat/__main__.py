"""``python -m examples.chat [--redis-url URL] [--host HOST] [--port PORT]``"""

from .app import main

main(prog="python -m examples.chat")

"""Whether the Hugging Face hub can be asked right now. Without network, `datasets` and
`transformers` retry for about a minute before they fail; this answers in milliseconds, so
that a missing download is refused at once and a cached copy is used without asking."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlsplit

__all__ = ["hub_unreachable", "offline_mode"]


def offline_mode() -> bool:
    """HF_HUB_OFFLINE is set: the libraries read their caches and never ask the hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=1)
def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be asked (offline mode, or its endpoint does not answer), or None."""
    if offline_mode():
        return "HF_HUB_OFFLINE is set"
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"{host}:{port} does not answer: {error.strerror or type(error).__name__}"

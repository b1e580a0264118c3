"""Whether the Hugging Face hub can be asked right now. Without network, `datasets` and
`transformers` retry for about a minute before they fail; this answers in milliseconds, so
that a missing download is refused at once and a cached copy is used without asking."""

from __future__ import annotations

import hashlib
import os
import socket
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from infoprompt.errors import InfoPromptError

__all__ = ["hub_fingerprint", "hub_unreachable", "load_hub_splits", "offline_mode"]


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


def load_hub_splits(path: str, config: str | None, split_names: tuple[str, ...], *,
                    what: str, local: str) -> list[Any]:
    """`datasets.load_dataset(path, config)`'s named splits; any failure (unreachable hub,
    missing package, hub errors) is one line naming `what` and the `local` way round it."""
    from infoprompt.tasks import DataError  # tasks imports nothing heavy; hub stays light

    unreachable = hub_unreachable()
    if unreachable and not offline_mode():  # offline mode may still find it in the cache
        raise DataError(f"cannot download {what}: the Hugging Face hub is unreachable "
                        f"({unreachable}); {local}, or set HF_HUB_OFFLINE=1 to use a copy in "
                        "the datasets cache")
    try:
        import datasets  # heavy import; only the hub sources need it

        loaded = datasets.load_dataset(path, config) if config else datasets.load_dataset(path)
        return [loaded[name] for name in split_names]
    except InfoPromptError:
        raise
    except Exception as e:  # offline, missing package, hub errors: all mean "use a local dir"
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        reason = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
        raise DataError(f"could not load {what} from the Hugging Face hub ({reason}); "
                        f"{local}") from None


def hub_fingerprint(splits: list[Any], tables: list[pa.Table]) -> str:
    """The datasets' own fingerprints, or else a hash of the converted tables' content."""
    fingerprints = [getattr(split, "_fingerprint", None) for split in splits]
    if all(fingerprints):
        return "-".join(fingerprints)
    digest = hashlib.sha256()
    for table in tables:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue())
    return digest.hexdigest()

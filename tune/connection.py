"""Joining Ray (a new local instance, or a running cluster at --address) and refusing,
before any trial starts, what would only fail mid-search."""

from __future__ import annotations

import os
import socket
import sys

from infoprompt.errors import InfoPromptError
from tune.experiment import is_uri

__all__ = ["check_cluster", "connect", "default_concurrency", "probe"]


def _cannot_connect(address: str | None, reason: str) -> InfoPromptError:
    return InfoPromptError(f"cannot connect to Ray at {address or 'a new local Ray'}: "
                           f"{reason[:200]}; check --address (host:port of the head, or "
                           "'auto' on a cluster node)")


def probe(address: str, timeout: float = 10) -> None:
    """Fail fast on an address nobody listens at: ray.init would retry for many minutes."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        if address.startswith("ray://"):  # Ray Client: host:port of its server
            target = address[len("ray://"):].split("/")[0]
        else:  # host:port, or 'auto' -> this machine's cluster (error if there is none)
            target = canonicalize_bootstrap_address(address)
        if not target:
            raise ConnectionError("no running Ray cluster found on this machine")
        host, _, port = target.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except Exception as error:  # noqa: BLE001 - ValueError, ConnectionError, OSError, …
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise _cannot_connect(address, f"nothing answers there ({reason})") from None


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address`, or start a new local Ray (None)."""
    import ray

    if address:
        probe(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            # "local": a new Ray even if RAY_ADDRESS or a `ray start` on this machine names
            # another cluster (joining one takes --address). Nothing outside this machine
            # joins it: on loopback, Ray skips finding this machine's address, which waits
            # on DNS where there is no network.
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    except Exception as error:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, …
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _cannot_connect(address, reason) from None


def check_cluster(*, address: str | None, gpus_per_trial: float, storage: str) -> None:
    """Refuse, before any trial starts, what would only fail mid-search."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_trial > 0 and gpus == 0:
        if not address:
            raise InfoPromptError(f"--gpus-per-trial {gpus_per_trial:g}, but this machine "
                                  "has no GPU Ray can use; drop the flag to train on CPU")
        print("warning: the cluster has no GPU node yet; trials wait for the autoscaler",
              file=sys.stderr)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not is_uri(storage) and not os.environ.get("INFOPROMPT_SHARED_FS"):
        raise InfoPromptError(
            f"this Ray cluster has {len(nodes)} nodes but --storage-path {storage} is local: "
            "checkpoints written on one node are invisible to the others; use s3://… or gs://… "
            "(or set INFOPROMPT_SHARED_FS=1 if that path is a shared file system)")


def default_concurrency(*, num_samples: int, cpus_per_trial: float,
                        gpus_per_trial: float) -> int:
    """As many trials as the cluster's resources hold now (Ray would otherwise run one at a
    time under a searcher); an autoscaling cluster without GPU nodes yet gets 4."""
    import ray

    resources = ray.cluster_resources()
    fits = [int(resources.get("CPU", 1) // cpus_per_trial)]
    if gpus_per_trial:
        fits.append(int(resources.get("GPU", 0) // gpus_per_trial))
    return max(1, min(num_samples, min(fits) or 4))

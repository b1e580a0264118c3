"""A process's share of a GPU it shares with other trials: the memory cap at a trial's start
and the cache handed back at its end. Plain torch, no Ray: tune/trainable.py calls these,
and the CUDA tests run them without Ray."""

from __future__ import annotations

import gc

import torch

__all__ = ["CUDA_CONTEXT_BYTES", "cap_gpu_memory", "gpu_memory_fraction", "release_memory"]

# What one process holds on a GPU outside torch's caching allocator: the CUDA context with
# cuBLAS/cuDNN handles and their workspaces (about 0.5 GiB with torch 2.x on an H100; 1 GiB
# leaves room for a larger one).
CUDA_CONTEXT_BYTES = 2 ** 30


def gpu_memory_fraction(share: float, device: torch.device, total_bytes: int) -> float | None:
    """The cap on this process's allocator for a trial holding `share` of a GPU of
    `total_bytes`, or None (no cap: a whole GPU, or CPU). The 1/share processes on that GPU
    each hold a CUDA context outside the allocator, so each allocator gets its share of what
    the contexts leave: share·(total - contexts) = share·total - one context."""
    if device.type != "cuda" or not 0 < share < 1:
        return None
    return max(share / 2, share - CUDA_CONTEXT_BYTES / total_bytes)


def cap_gpu_memory(share: float, device: torch.device) -> float | None:
    """Under fractional GPUs (`--gpus-per-trial 0.25`) Ray only counts; nothing stops one
    trial from taking the whole GPU's memory and failing the others with out-of-memory.
    Caps torch's caching allocator (`gpu_memory_fraction`) and returns the fraction set,
    or None."""
    if device.type != "cuda" or not 0 < share < 1:
        return None
    # torch wants an index: "cuda" alone is the current device
    index = torch.cuda.current_device() if device.index is None else device.index
    fraction = gpu_memory_fraction(share, device,
                                   torch.cuda.get_device_properties(index).total_memory)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


def release_memory(device: torch.device, held: list) -> None:
    """End of a trial: Tune reuses the worker process for the next trial (reuse_actors), so
    drop this one's models and optimizer states and, on CUDA, hand the cache back (other
    trials on the same GPU can use it). On CPU dropping the references frees them; a full
    gc.collect() there only delays the end of the trial, and Tune gives a stopped trial's
    thread a few seconds to end before it refuses to reuse the worker."""
    held.clear()
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()

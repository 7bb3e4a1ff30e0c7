"""Where and how a model runs: device choice, mixed precision, DDP process group, seeding.

Precision policy (one place, used by training and evaluation alike):
    CUDA : autocast to bfloat16 when the GPU supports it, else float16 with a GradScaler;
           channels_last memory format; cudnn.benchmark on (input sizes are fixed).
    MPS  : float32 (autocast on MPS is not reliable across torch versions).
    CPU  : float32, or with `train.fast: true` bfloat16 autocast + channels_last.

Distributed: when RANK and WORLD_SIZE are set (torchrun) and WORLD_SIZE > 1, one process per
device joins a process group (nccl on CUDA, gloo otherwise); only rank 0 logs and writes.
"""
from __future__ import annotations

import contextlib
import copy
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Precision:
    """How tensors are laid out and cast: autocast dtype (None = float32), GradScaler, memory format."""
    autocast_dtype: torch.dtype | None
    use_grad_scaler: bool
    channels_last: bool

    def autocast(self, device: torch.device):
        """Autocast context for `device` (a no-op context in float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def precision_policy(device: torch.device, fast: bool = False) -> Precision:
    """The precision policy of the module docstring for `device`; `fast` only matters on CPU."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, use_grad_scaler=False, channels_last=True)
        return Precision(torch.float16, use_grad_scaler=True, channels_last=True)
    if device.type == "cpu" and fast:
        return Precision(torch.bfloat16, use_grad_scaler=False, channels_last=True)
    return Precision(None, use_grad_scaler=False, channels_last=False)


def select_device(local_rank: int = 0) -> torch.device:
    """CUDA (this process's GPU under DDP) if available, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """Human-readable device name for metrics.json, e.g. 'cuda:0 (NVIDIA H200)' or 'cpu'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@dataclass
class Distributed:
    """This process's place in a (possibly trivial) process group."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False   # we called init_process_group, so we also tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.created_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed() -> Distributed:
    """Join the torchrun process group when RANK/WORLD_SIZE say so; single process otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Distributed()
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size <= 1:
        return Distributed()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    created = False
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        created = True
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                       created_group=created)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def seed_data_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: numpy/python RNGs follow torch's per-worker seed.

    torch derives each worker's seed from the loader's generator (base seed + worker id), so a
    seeded generator makes augmentations drawn with numpy/random reproducible too.
    """
    worker_seed = torch.initial_seed() % 2 ** 32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. run seed, epoch, rank)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def capture_rng_state() -> dict:
    """Python, numpy and torch (CPU + CUDA) RNG states, in types torch.load(weights_only=True) accepts."""
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"bit_generator": bit_generator, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of `capture_rng_state`."""
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["bit_generator"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["position"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def with_defaults(cfg: dict | None) -> dict:
    """`cfg` deep-merged over nbutils.config.DEFAULTS (a new dict; sections the defaults lack are kept)."""
    from nbutils import config

    def merge(base: dict, override: dict) -> dict:
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merged[key] = merge(base[key], value)
            else:
                merged[key] = value
        return merged

    if cfg is not None and not isinstance(cfg, dict):
        raise TypeError(f"run parameters must be a dict of sections (data, model, train), got {type(cfg).__name__}")
    return copy.deepcopy(merge(config.defaults(), cfg or {}))

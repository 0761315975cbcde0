"""Data-parallel training on `torch.distributed`: launch detection, DDP / FSDP2 wrapping,
per-rank data slices and full (unsharded) state dicts for checkpoints.

A run is distributed when `torchrun` (or anything that sets the same variables) started
it: `RANK`, `WORLD_SIZE` and `LOCAL_RANK` in the environment, with `MASTER_ADDR` and
`MASTER_PORT` for the rendezvous. NCCL is used on CUDA (one device per local rank),
gloo on CPU. Every collective runs under the process group's timeout, so a rank that
dies makes the others fail with an error instead of waiting forever.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .layers import Block
from .objectives import TrainingObjective

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_from_env(environ=None) -> Launch | None:
    """The launch torchrun described in the environment, or None for a plain process.

    A launch of one process (`WORLD_SIZE=1`) still counts: it trains through the same
    wrappers, which is how a single-GPU DDP overhead is measured.
    """
    env = os.environ if environ is None else environ
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    try:
        launch = Launch(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
    except ValueError:
        raise ValueError(
            "RANK/WORLD_SIZE/LOCAL_RANK must be integers, got "
            f"{env['RANK']!r}/{env['WORLD_SIZE']!r}/{env['LOCAL_RANK']!r}"
        ) from None
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size:
        raise ValueError(f"RANK={launch.rank} is outside a WORLD_SIZE={launch.world_size}")
    return launch


def setup(launch: Launch, device: str | torch.device | None, timeout_s: float) -> torch.device:
    """Join the process group (if not joined already) and return this rank's device."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", launch.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    elif dist.get_world_size() != launch.world_size or dist.get_rank() != launch.rank:
        raise ValueError(
            f"the process group is rank {dist.get_rank()} of {dist.get_world_size()}, "
            f"the environment says {launch.rank} of {launch.world_size}"
        )
    return device


def wrap(
    objective: TrainingObjective, strategy: str, device: torch.device, *, gan: bool
) -> nn.Module:
    """DDP: a wrapper module around `objective`; FSDP2: `objective` itself, its model
    sharded in place (each transformer block one unit, the rest in the model's root
    unit, with `loss` and `discriminator_loss` registered as forward methods so the
    root unit gathers its parameters for them).

    vae_gan runs two forwards per step through one module, the discriminator's touching
    no generator parameter, so DDP must look for unused parameters there.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(objective, device_ids=ids, find_unused_parameters=gan)
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    model = objective.model
    # fully_shard does not broadcast: start every rank from rank 0's weights.
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            dist.broadcast(tensor, src=0)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module)
    fully_shard(model)
    for method in ("loss", "discriminator_loss"):
        register_fsdp_forward_method(model, method)
    return objective


def unwrap(module: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper and a `TrainingObjective`."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        module = module.module
    return module.model if isinstance(module, TrainingObjective) else module


def full_model_state(model: nn.Module, strategy: str | None) -> dict[str, torch.Tensor] | None:
    """The unsharded state dict on CPU, with the names of the plain model; on rank 0 only
    (None elsewhere). Under FSDP every rank must call it (it gathers)."""
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        state = get_model_state_dict(
            unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return state if dist.get_rank() == 0 else None
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer, strategy: str | None) -> dict | None:
    """The optimizer's state in the plain `optimizer.state_dict()` layout (parameters
    numbered in param-group order), unsharded; rank 0 only. Collective under FSDP."""
    if strategy != "fsdp":
        if dist.is_initialized() and dist.get_rank() != 0:
            return None
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    state = get_optimizer_state_dict(
        unwrap(model), optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if dist.get_rank() != 0:
        return None
    # FQN keys -> the integer keys `Optimizer.load_state_dict` expects.
    number: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        params = []
        for name in group["params"]:
            number.setdefault(name, len(number))
            params.append(number[name])
        groups.append({**group, "params": params})
    return {
        "state": {number[k]: v for k, v in state["state"].items() if k in number},
        "param_groups": groups,
    }


def load_full_state(model: nn.Module, optimizers: dict, payload: dict, strategy: str) -> None:
    """Load a checkpoint written by `full_*_state` (or by a single process) into a
    wrapped model and its optimizers; every rank calls it with the same payload."""
    if strategy != "fsdp":
        unwrap(model).load_state_dict(payload["model"])
        for name, state in payload["optimizers"].items():
            if name in optimizers:
                optimizers[name].load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    model = unwrap(model)
    set_model_state_dict(model, payload["model"], options=options)
    names = {id(p): n for n, p in model.named_parameters()}  # tied: the first name
    for key, optimizer in optimizers.items():
        state = payload["optimizers"].get(key)
        if state is None:
            continue
        params = [p for g in optimizer.param_groups for p in g["params"]]
        fqn = [names[id(p)] for p in params]
        by_name = {
            "state": {fqn[k]: v for k, v in state["state"].items()},
            "param_groups": [
                {**g, "params": [fqn[k] for k in g["params"]]} for g in state["param_groups"]
            ],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=options)


def all_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the ranks (one all-reduce for the whole dict)."""
    if not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))

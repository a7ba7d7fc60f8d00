"""Training state on disk: weights, optimizer and EMA as safetensors plus JSON, never pickle.

One checkpoint directory holds, for every named part, `<name>.safetensors` (module weights),
`<name>.optim.safetensors` + `<name>.optim.json` (optimizer tensors and the rest of its state),
`<name>.ema.safetensors` + `<name>.ema.json` (EMA shadow weights and counters), and `state.json`
(step, metrics, anything else the loop needs to resume). Ray Train persists the directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn

if TYPE_CHECKING:  # diffusers is heavy to import: only the diffusion stages' workers load it
    from diffusers.training_utils import EMAModel

STATE_FILE = "state.json"


def save_weights(module: nn.Module, path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """A module's state dict as one safetensors file (tensors copied to contiguous CPU memory)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into its tensors (for safetensors) and its JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_files(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    """Inverse of `optimizer_to_files`: rebuild the state dict and load it."""
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *rest["scalars"].items()]:
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in rest["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_state(directory: Path | str, *, step: int, modules: dict[str, nn.Module],
               optimizers: dict[str, torch.optim.Optimizer] | None = None,
               emas: dict[str, EMAModel] | None = None, extra: dict | None = None) -> None:
    """Write everything needed to resume at `step` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        save_weights(module, directory / f"{name}.safetensors")
    for name, optimizer in (optimizers or {}).items():
        tensors, rest = optimizer_to_files(optimizer)
        save_file(tensors, str(directory / f"{name}.optim.safetensors"))
        (directory / f"{name}.optim.json").write_text(json.dumps(rest))
    for name, ema in (emas or {}).items():
        counters = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
        save_file({str(i): p.detach().to("cpu").contiguous() for i, p in enumerate(ema.shadow_params)},
                  str(directory / f"{name}.ema.safetensors"))
        (directory / f"{name}.ema.json").write_text(json.dumps(counters))
    (directory / STATE_FILE).write_text(json.dumps({"step": step, **(extra or {})}, indent=1))


def load_state(directory: Path | str, *, modules: dict[str, nn.Module],
               optimizers: dict[str, torch.optim.Optimizer] | None = None,
               emas: dict[str, EMAModel] | None = None) -> dict:
    """Restore what `save_state` wrote (in place) and return the contents of state.json."""
    directory = Path(directory)
    for name, module in modules.items():
        module.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
    for name, optimizer in (optimizers or {}).items():
        rest = json.loads((directory / f"{name}.optim.json").read_text())
        optimizer_from_files(optimizer, load_file(str(directory / f"{name}.optim.safetensors")), rest)
    for name, ema in (emas or {}).items():
        load_ema(directory, name, ema)
    return json.loads((directory / STATE_FILE).read_text())


def load_ema(directory: Path, name: str, ema: EMAModel) -> None:
    """Restore EMA `name`'s shadow weights and counters (in place, on the device its shadow weights are on)."""
    shadow = load_file(str(directory / f"{name}.ema.safetensors"))
    counters = json.loads((directory / f"{name}.ema.json").read_text())
    device = ema.shadow_params[0].device
    ema.load_state_dict({**counters, "shadow_params": [shadow[str(i)].to(device) for i in range(len(shadow))]})


def export_weights(directory: Path | str, name: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """The weights to ship for part `name` of a checkpoint: its EMA weights when it has an EMA."""
    directory = Path(directory)
    module.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
    if (directory / f"{name}.ema.safetensors").exists():
        from diffusers.training_utils import EMAModel

        ema = EMAModel(module.parameters())
        load_ema(directory, name, ema)
        ema.copy_to(module.parameters())
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}

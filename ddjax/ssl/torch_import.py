"""Selecting a teacher's encoder from a PyTorch state dict (read with
``ddjax.models.state_dict_files.read_state_dict``: ``.npz``, ``.safetensors``, ``.pt``/``.pth``).

KRR-ST ships its Barlow Twins ResNet-18 teachers as PyTorch files; other code bases wrap the
encoder's names in a prefix ('module.' from DataParallel, 'backbone.') or save heads beside it
('fc.*', 'projector.*'). :func:`encoder_state_dict` strips one configured prefix and drops only the
names the user listed; everything else must match the network exactly (checked by
``ddjax.models.from_torch_state_dict``).
"""

from __future__ import annotations

from typing import Iterable


def encoder_state_dict(state_dict: dict, prefix: str = "", ignore: Iterable[str] = ()) -> dict:
    """Strip ``prefix`` from the names that carry it, then drop names starting with ``ignore``."""
    ignore = tuple(ignore)
    out = {}
    for name, value in state_dict.items():
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
        if ignore and name.startswith(ignore):
            continue
        out[name] = value
    return out

"""The device mesh: one place that decides how arrays are laid out over devices.

Steps are written for a 1-D ``data`` mesh axis over all devices: batches (synthetic images,
independent experts or probes) are split along their leading axis, parameters are replicated.
The same jitted code then runs on one CPU, one GPU or a pod slice; on a multi-host pod call
``jax.distributed.initialize()`` before building the mesh.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis_name,))


def leading_axis_sharding(mesh: Mesh, axis_name: str = DATA_AXIS) -> NamedSharding:
    """Split an array's leading axis over the mesh axis."""
    return NamedSharding(mesh, PartitionSpec(axis_name))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def shard_leading(tree: Any, mesh: Mesh, axis_name: str = DATA_AXIS) -> Any:
    """Place every leaf split along its leading axis, whose size must divide by the mesh size."""
    size = mesh.shape[axis_name]
    for leaf in jax.tree.leaves(tree):
        if np.shape(leaf)[0] % size:
            raise ValueError(f"leading axis {np.shape(leaf)[0]} does not divide over {size} devices")
    return jax.device_put(tree, leading_axis_sharding(mesh, axis_name))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf fully on every device."""
    return jax.device_put(tree, replicated_sharding(mesh))

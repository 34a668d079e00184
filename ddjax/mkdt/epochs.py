"""Epochs of E students (experts, or one evaluation encoder per seed) over a training set, held
on the devices or streamed.

:func:`student_epochs` gives one function for both: ``epoch(carry, perm_EN, aug_keys_E)`` with
``carry = (params_E, state_E, opt_E)``. Arrays in memory go to every device once and each epoch
is one compiled program (``make_student_epoch``). A :class:`ddjax.mkdt.student.StudentRows`
(``data.stream``) is read a few steps at a time: each process reads only the minibatches of the
networks its devices hold, ahead in a background thread, and each ``STEPS_PER_PROGRAM`` steps
are one compiled program (``make_student_steps``) on the global minibatches. Both compute the
same updates. See docs/scaling.md#reading-the-data.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
import optax

from ddjax import mesh
from ddjax.data.stream import BatchStream
from ddjax.mkdt.experts import Augment, LossFn, make_student_epoch, make_student_steps
from ddjax.mkdt.student import StudentRows

Epoch = Callable[[tuple, np.ndarray, jax.Array], tuple]
# Streamed: minibatches scanned per compiled program (XLA's CPU backend runs a step 1.3-1.7x
# faster inside a scan than dispatched alone; docs/scaling.md#reading-the-data).
STEPS_PER_PROGRAM = 8


def student_epochs(loss_fn: LossFn, optimizer: optax.GradientTransformation, batch_size: int,
                   augment: Augment | None, data: tuple[np.ndarray, np.ndarray] | StudentRows
                   ) -> Epoch:
    """``epoch((params_E, state_E, opt_E), perm_EN, aug_keys_E) -> (params_E, state_E, opt_E,
    loss_E)`` over ``data``: ``(images, targets)`` in memory, or rows read from the host (rows
    with their targets, :meth:`StudentRows.with_targets`). ``perm_EN`` is each network's example
    order for the epoch; the carry's arrays are donated."""
    if isinstance(data, StudentRows):
        return _streamed(make_student_steps(loss_fn, optimizer, augment), batch_size, data)
    epoch_fn = make_student_epoch(loss_fn, optimizer, batch_size, augment)
    on_devices = mesh.replicate(tuple(np.asarray(x, np.float32) if x.dtype.kind == "f" else x
                                      for x in map(np.asarray, data)))

    def epoch(carry, perm_EN, aug_keys_E):
        return epoch_fn(*carry, *on_devices, *mesh.shard((perm_EN, aug_keys_E)))

    return epoch


def num_rows(data: tuple[np.ndarray, np.ndarray] | StudentRows) -> int:
    """How many examples :func:`student_epochs`' ``data`` holds."""
    return len(data if isinstance(data, StudentRows) else data[0])


def _step_indices(perm_EN: np.ndarray, batch_size: int, per_program: int):
    """Each program's rows, ``[E, K, B]``: the full minibatches ``per_program`` steps at a time,
    then the last partial minibatch alone."""
    networks, n = perm_EN.shape
    full = n // batch_size
    body = perm_EN[:, :full * batch_size].reshape(networks, full, batch_size)
    for start in range(0, full, per_program):
        yield body[:, start:start + per_program]
    if n % batch_size:
        yield perm_EN[:, full * batch_size:][:, None]


def _streamed(steps_fn, batch_size: int, rows: StudentRows) -> Epoch:
    def epoch(carry, perm_EN, aug_keys_E):
        perm_EN = np.asarray(mesh.fetch(perm_EN))
        networks, n = perm_EN.shape
        held = mesh.local_rows(networks)  # the networks this process's devices train
        aug_keys_E = mesh.shard(aug_keys_E)
        chunks = _step_indices(perm_EN, batch_size, STEPS_PER_PROGRAM)
        step, total = 0, 0.0
        with BatchStream(rows, chunks, held, ahead=2) as stream:
            for (images, targets), _ in stream:
                count = images.shape[1]
                images, targets = mesh.from_local_rows((images, targets), networks)
                *carry, loss_sum = steps_fn(*carry, images, targets, aug_keys_E, step)
                total, step = total + loss_sum, step + count  # no wait for the devices
        return (*carry, total / n)

    return epoch

"""Epochs of E students (experts, or one evaluation encoder per seed) over a training set, held
on the devices or streamed.

:func:`student_epochs` gives one function for both: ``epoch(carry, perm_EN, aug_keys_E)`` with
``carry = (params_E, state_E, opt_E)``. Arrays in memory go to every device once and each epoch
is one compiled program (``make_student_epoch``). A :class:`ddjax.mkdt.student.StudentRows`
(``data.stream``) is read a step at a time: each process reads only the minibatches of the
networks its devices hold, a step or two ahead in a background thread, and each step is one
compiled program (``make_student_step``) on the global minibatch. Both compute the same
updates. See docs/scaling.md#reading-the-data.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np
import optax

from ddjax import mesh
from ddjax.data.stream import BatchStream
from ddjax.mkdt.experts import Augment, LossFn, make_student_epoch, make_student_step
from ddjax.mkdt.student import StudentRows

Epoch = Callable[[tuple, np.ndarray, jax.Array], tuple]


def student_epochs(loss_fn: LossFn, optimizer: optax.GradientTransformation, batch_size: int,
                   augment: Augment | None, data: tuple[np.ndarray, np.ndarray] | StudentRows
                   ) -> Epoch:
    """``epoch((params_E, state_E, opt_E), perm_EN, aug_keys_E) -> (params_E, state_E, opt_E,
    loss_E)`` over ``data``: ``(images, targets)`` in memory, or rows read from the host (rows
    with their targets, :meth:`StudentRows.with_targets`). ``perm_EN`` is each network's example
    order for the epoch; the carry's arrays are donated."""
    if isinstance(data, StudentRows):
        return _streamed(make_student_step(loss_fn, optimizer, augment), batch_size, data)
    epoch_fn = make_student_epoch(loss_fn, optimizer, batch_size, augment)
    on_devices = mesh.replicate(tuple(np.asarray(x, np.float32) if x.dtype.kind == "f" else x
                                      for x in map(np.asarray, data)))

    def epoch(carry, perm_EN, aug_keys_E):
        return epoch_fn(*carry, *on_devices, *mesh.shard((perm_EN, aug_keys_E)))

    return epoch


def _streamed(step_fn, batch_size: int, rows: StudentRows) -> Epoch:
    def epoch(carry, perm_EN, aug_keys_E):
        perm_EN = np.asarray(mesh.fetch(perm_EN))
        networks, n = perm_EN.shape
        held = mesh.local_rows(networks)  # the networks this process's devices train
        aug_keys_E = mesh.shard(aug_keys_E)
        batches = (perm_EN[:, start:start + batch_size] for start in range(0, n, batch_size))
        total = 0.0
        with BatchStream(rows, batches, held, ahead=2) as stream:
            for t, ((images, targets), _) in enumerate(stream):
                size = images.shape[1]
                images, targets = mesh.from_local_rows((images, targets), networks)
                *carry, loss = step_fn(*carry, images, targets, aug_keys_E, t)
                total = total + loss * size  # stays on the devices: no wait per step
        return (*carry, total / n)

    return epoch

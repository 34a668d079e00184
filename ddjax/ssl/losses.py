"""SSL objectives on projector outputs: Barlow Twins and SimCLR's NT-Xent.

Both take the two views' projections ``z1_BD``, ``z2_BD`` (row b of each from the same image) and
return a scalar to minimise; they are pure ``jnp``. ``barlow_twins_loss`` standardises each
dimension over the batch as the official code's ``BatchNorm1d(affine=False)`` (biased variance,
eps 1e-5), lambda 0.0051, and ``scale`` for solo-learn's ``scale_loss = 0.1``. ``nt_xent_loss``
is SAS's SimCLR loss (temperature 0.5, cosine similarity, 2B-2 negatives, mean over 2B anchors).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.nn import logsumexp

BARLOW_TWINS_LAMBDA = 0.0051
"""Off-diagonal weight of the Barlow Twins paper / official code (also solo-learn's default)."""

SIMCLR_TEMPERATURE = 0.5
"""NT-Xent temperature of SAS's SimCLR (``--temperature`` default) and SimCLR's CIFAR runs."""


def _compute_dtype(z: jnp.ndarray):
    """float32 for low-precision inputs (bf16/f16), float64 kept (finite-difference tests)."""
    return jnp.promote_types(z.dtype, jnp.float32)


def standardize_over_batch(z_BD: jnp.ndarray, eps: float = 1e-5,
                           mask_B: jnp.ndarray | None = None) -> jnp.ndarray:
    """Per-dimension (x - mean) / sqrt(var + eps) over the batch, biased variance.

    This is what ``BatchNorm1d(affine=False)`` computes in training mode; the Barlow Twins
    cross-correlation is built from it. ``mask_B`` (0/1 weights) restricts the statistics to the
    rows with weight 1, as if the others were not in the batch (padded minibatches); the rows
    with weight 0 are still standardised with those statistics and must be ignored by the caller.
    """
    if mask_B is None:
        mask_B = jnp.ones(z_BD.shape[:1], z_BD.dtype)
    w_B1 = mask_B.astype(z_BD.dtype)[:, None]
    count = jnp.sum(w_B1)
    mean_D = jnp.sum(w_B1 * z_BD, axis=0) / count
    centred_BD = z_BD - mean_D
    var_D = jnp.sum(w_B1 * jnp.square(centred_BD), axis=0) / count
    return centred_BD / jnp.sqrt(var_D + eps)


def cross_correlation(z1_BD: jnp.ndarray, z2_BD: jnp.ndarray, eps: float = 1e-5,
                      mask_B: jnp.ndarray | None = None) -> jnp.ndarray:
    """The (D, D) Barlow Twins matrix: standardised z1 transposed times standardised z2, over B
    (over the rows where ``mask_B`` is 1 when given)."""
    dtype = jnp.promote_types(_compute_dtype(z1_BD), _compute_dtype(z2_BD))
    w_B = jnp.ones(z1_BD.shape[:1], dtype) if mask_B is None else mask_B.astype(dtype)
    a_BD = standardize_over_batch(z1_BD.astype(dtype), eps, w_B) * w_B[:, None]
    b_BD = standardize_over_batch(z2_BD.astype(dtype), eps, w_B)
    batch = jnp.sum(w_B)
    # Full float32 matmul precision: TF32 on GPUs would perturb the D x D correlations.
    hi = jax.lax.Precision.HIGHEST
    return jnp.einsum("bi,bj->ij", a_BD, b_BD, precision=hi) / batch


def barlow_twins_loss(
    z1_BD: jnp.ndarray,
    z2_BD: jnp.ndarray,
    lambd: float = BARLOW_TWINS_LAMBDA,
    *,
    scale: float = 1.0,
    eps: float = 1e-5,
    mask_B: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Barlow Twins redundancy-reduction loss.

    ``scale * (sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2)`` where ``c`` is
    :func:`cross_correlation`. The invariance term pulls the diagonal to 1 (the two views agree
    dimension by dimension); the redundancy term pushes the off-diagonal to 0 (dimensions carry
    different information). ``mask_B`` (0/1) computes it over the rows with weight 1 only (a
    padded minibatch); None uses every row. Inputs are computed in float32 (float64 stays float64).
    """
    c_DD = cross_correlation(z1_BD, z2_BD, eps, mask_B)
    diag_D = jnp.diagonal(c_DD)
    on_diag = jnp.sum(jnp.square(1.0 - diag_D))
    off_diag = jnp.sum(jnp.square(c_DD)) - jnp.sum(jnp.square(diag_D))
    return scale * (on_diag + lambd * off_diag)


def nt_xent_loss(
    z1_BD: jnp.ndarray,
    z2_BD: jnp.ndarray,
    temperature: float = SIMCLR_TEMPERATURE,
    *,
    eps: float = 1e-12,
) -> jnp.ndarray:
    """SimCLR's NT-Xent (InfoNCE over the 2B projections of a batch of B image pairs).

    For anchor ``a`` among the 2B L2-normalised projections, with ``p`` the other view of the
    same image: ``-log( exp(s_ap / T) / sum_{k != a} exp(s_ak / T) )`` with ``s`` the cosine
    similarity. The mean over all 2B anchors is returned.
    """
    batch = z1_BD.shape[0]
    z_ND = jnp.concatenate([z1_BD, z2_BD], axis=0).astype(jnp.float32)
    norms_N1 = jnp.sqrt(jnp.sum(jnp.square(z_ND), axis=1, keepdims=True))
    u_ND = z_ND / jnp.maximum(norms_N1, eps)
    logits_NN = jnp.matmul(u_ND, u_ND.T, precision=jax.lax.Precision.HIGHEST) / temperature
    n = 2 * batch
    self_mask_NN = jnp.eye(n, dtype=bool)
    logits_NN = jnp.where(self_mask_NN, -jnp.inf, logits_NN)
    partner_N = jnp.concatenate([jnp.arange(batch, n), jnp.arange(0, batch)])
    positive_N = logits_NN[jnp.arange(n), partner_N]
    return jnp.mean(logsumexp(logits_NN, axis=1) - positive_N)

"""On-device SSL view augmentation for NHWC float images in [0, 1].

Two random views per image, by the torchvision pipeline SSL recipes use: ``RandomResizedCrop ->
RandomHorizontalFlip -> RandomApply(ColorJitter, p) -> RandomGrayscale -> [GaussianBlur] ->
[Solarize]``, with torchvision's distributions (not its random stream) and PIL's resampling, in
float rather than PIL's uint8. Each sample has its own key and the per-sample function is
vmapped, so a batch is augmented inside one jitted step. Normalisation is the caller's job.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601-2 luma weights (PIL ``convert('L')``; torchvision tensors use 0.2989)."""

_INTERPOLATIONS = ("bilinear", "bicubic")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The augmentation of one view. Frozen and hashable, so it can be a static jit argument."""

    output_size: Optional[Tuple[int, int]] = None  # (H, W); None keeps the input size
    crop: bool = True
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    crop_ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    crop_attempts: int = 10
    interpolation: str = "bilinear"  # or "bicubic"
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: Tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int = 3
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5

    def __post_init__(self):
        # Lists (e.g. from a JSON/ConfigDict config) become tuples so the config stays hashable.
        for name in ("output_size", "crop_scale", "crop_ratio", "blur_sigma"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.blur_kernel_size % 2 != 1:
            raise ValueError(f"blur_kernel_size must be odd, got {self.blur_kernel_size}")
        if not (0.0 <= self.hue <= 0.5):
            raise ValueError(f"hue must be in [0, 0.5] (torchvision), got {self.hue}")


@dataclasses.dataclass(frozen=True)
class ViewAugmentConfig:
    """The two views' augmentations (they differ in asymmetric recipes such as Barlow Twins)."""

    view1: AugmentConfig = AugmentConfig()
    view2: AugmentConfig = AugmentConfig()

    @staticmethod
    def barlow_twins_cifar() -> "ViewAugmentConfig":
        """solo-learn's CIFAR Barlow Twins views (``augmentations/asymmetric.yaml``).

        RandomResizedCrop scale (0.08, 1), flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8,
        grayscale 0.2, no blur; solarisation p 0 on view 1 and 0.2 on view 2. (solo-learn's
        CIFAR ResNet-18 stem, conv 3x3 stride 1 padding 2 and no max-pool, is exactly the KRR-ST
        teacher's, which is why this is taken as the teacher's recipe.)
        """
        view1 = AugmentConfig(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
        return ViewAugmentConfig(view1, dataclasses.replace(view1, solarize_p=0.2))

    @staticmethod
    def simclr_cifar() -> "ViewAugmentConfig":
        """SAS's SimCLR views (``configs.py``): RandomResizedCrop (bicubic, default scale/ratio),
        flip 0.5, and SimCLR's colour distortion with strength 0.5, i.e. ColorJitter(0.4, 0.4,
        0.4, 0.1) with p 0.8 and grayscale 0.2. Symmetric, no blur, no solarisation."""
        view = AugmentConfig(
            interpolation="bicubic", brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1
        )
        return ViewAugmentConfig(view, view)


def barlow_twins_cifar() -> ViewAugmentConfig:
    """Shortcut for :meth:`ViewAugmentConfig.barlow_twins_cifar`."""
    return ViewAugmentConfig.barlow_twins_cifar()


def simclr_cifar() -> ViewAugmentConfig:
    """Shortcut for :meth:`ViewAugmentConfig.simclr_cifar`."""
    return ViewAugmentConfig.simclr_cifar()


# ----------------------------------------------------------------------------- crop


def sample_crop_box(
    key, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts: int = 10
):
    """A torchvision RandomResizedCrop box ``(top, left, h, w)`` as int32 scalars (jittable)."""
    # One uniform draw for everything (cheaper to compile than one draw per quantity).
    u = jax.random.uniform(key, (2 * attempts + 2,))
    area = float(height * width)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[:attempts])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[attempts : 2 * attempts])
    cand_w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
    cand_h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
    fits = (cand_w > 0) & (cand_w <= width) & (cand_h > 0) & (cand_h <= height)
    first = jnp.argmax(fits)
    found = jnp.any(fits)
    # Fallback: the whole image, narrowed to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_w, fb_h = int(round(height * max(ratio))), height
    else:
        fb_w, fb_h = width, height
    h = jnp.where(found, cand_h[first], fb_h)
    w = jnp.where(found, cand_w[first], fb_w)
    # Uniform integer offsets in [0, H - h] and [0, W - w], as torch.randint draws them.
    rand_top = jnp.minimum(jnp.floor(u[-2] * (height - h + 1)).astype(jnp.int32), height - h)
    rand_left = jnp.minimum(jnp.floor(u[-1] * (width - w + 1)).astype(jnp.int32), width - w)
    top = jnp.where(found, rand_top, (height - fb_h) // 2)
    left = jnp.where(found, rand_left, (width - fb_w) // 2)
    return top.astype(jnp.int32), left.astype(jnp.int32), h.astype(jnp.int32), w.astype(jnp.int32)


def _triangle(x):
    return jnp.maximum(0.0, 1.0 - jnp.abs(x))


def _keys_cubic(x, a=-0.5):
    x = jnp.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


_KERNELS = {"bilinear": (_triangle, 1.0), "bicubic": (_keys_cubic, 2.0)}


def resample_matrix(start, length, in_size: int, out_size: int, interpolation: str = "bilinear"):
    """``(out_size, in_size)`` weights that resample the segment ``[start, start+length)``.

    PIL's ``crop(...).resize(...)`` on one axis: output pixel ``o`` is centred at input edge
    coordinate ``c = start + (o + 0.5) * length / out_size``; input pixel ``p`` of the segment gets
    ``kernel((p + 0.5 - c) / max(1, length / out_size))`` (the kernel widens when shrinking, i.e.
    antialiasing), and each row is renormalised over the pixels inside the segment, which is
    how PIL treats the borders of the cropped image. ``start``/``length`` may be traced.
    """
    kernel, _ = _KERNELS[interpolation]
    start = jnp.asarray(start, jnp.float32)
    length = jnp.asarray(length, jnp.float32)
    scale = length / out_size
    centre_O = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
    pixel_I = jnp.arange(in_size, dtype=jnp.float32)
    dist_OI = (pixel_I[None, :] + 0.5 - centre_O[:, None]) / jnp.maximum(scale, 1.0)
    inside_I = (pixel_I >= start) & (pixel_I < start + length)
    weights_OI = jnp.where(inside_I[None, :], kernel(dist_OI), 0.0)
    total_O1 = jnp.sum(weights_OI, axis=1, keepdims=True)
    return weights_OI / jnp.where(total_O1 == 0.0, 1.0, total_O1)


def resized_crop(
    image_HWC, top, left, h, w, size: Tuple[int, int], interpolation: str = "bilinear"
):
    """Crop the box ``[top, top+h) x [left, left+w)`` (may be traced) and resize it to ``size``.

    Separable resampling with :func:`resample_matrix` on each axis, matching PIL's
    ``crop((left, top, left+w, top+h)).resize(size)`` for 'bilinear' and 'bicubic' up to float
    rounding. Bicubic overshoot is clipped to [0, 1], as PIL's uint8 output is.
    """
    height, width = image_HWC.shape[0], image_HWC.shape[1]
    rows_OH = resample_matrix(top, h, height, size[0], interpolation)
    cols_PW = resample_matrix(left, w, width, size[1], interpolation)
    hi = jax.lax.Precision.HIGHEST
    out = jnp.einsum("oh,hwc->owc", rows_OH, image_HWC.astype(jnp.float32), precision=hi)
    out = jnp.einsum("pw,owc->opc", cols_PW, out, precision=hi)
    return jnp.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------- colour


def rgb_to_grayscale(image_HWC):
    """Luma ``(H, W, 1)`` with the ITU-R 601-2 weights."""
    weights = jnp.asarray(GRAY_WEIGHTS, image_HWC.dtype)
    return jnp.sum(image_HWC * weights, axis=-1, keepdims=True)


def adjust_brightness(image_HWC, factor):
    """Blend with black: ``clip(factor * x)``."""
    return jnp.clip(image_HWC * factor, 0.0, 1.0)


def adjust_contrast(image_HWC, factor):
    """Blend with the mean luma of the whole image."""
    mean = jnp.mean(rgb_to_grayscale(image_HWC))
    return jnp.clip(factor * image_HWC + (1.0 - factor) * mean, 0.0, 1.0)


def adjust_saturation(image_HWC, factor):
    """Blend with the per-pixel luma."""
    gray = rgb_to_grayscale(image_HWC)
    return jnp.clip(factor * image_HWC + (1.0 - factor) * gray, 0.0, 1.0)


def rgb_to_hsv(image_HWC):
    """RGB in [0, 1] to HSV with hue in turns [0, 1). Gray pixels get hue 0 and saturation 0."""
    r, g, b = image_HWC[..., 0], image_HWC[..., 1], image_HWC[..., 2]
    maxc = jnp.max(image_HWC, axis=-1)
    minc = jnp.min(image_HWC, axis=-1)
    chroma = maxc - minc
    has_chroma = chroma > 0
    safe_chroma = jnp.where(has_chroma, chroma, 1.0)
    sat = jnp.where(maxc > 0, chroma / jnp.where(maxc > 0, maxc, 1.0), 0.0)
    # Hue sector (in sixths of a turn) from whichever channel is the maximum.
    hue_r = jnp.mod((g - b) / safe_chroma, 6.0)
    hue_g = (b - r) / safe_chroma + 2.0
    hue_b = (r - g) / safe_chroma + 4.0
    sixths = jnp.where(maxc == r, hue_r, jnp.where(maxc == g, hue_g, hue_b))
    hue = jnp.where(has_chroma, jnp.mod(sixths / 6.0, 1.0), 0.0)
    return jnp.stack([hue, sat, maxc], axis=-1)


def hsv_to_rgb(image_HWC):
    """Inverse of :func:`rgb_to_hsv` (hue in turns)."""
    hue, sat, val = image_HWC[..., 0], image_HWC[..., 1], image_HWC[..., 2]
    sixths = jnp.mod(hue, 1.0) * 6.0
    sector = jnp.floor(sixths)
    frac = sixths - sector
    sector = sector.astype(jnp.int32) % 6
    p = val * (1.0 - sat)
    q = val * (1.0 - sat * frac)
    t = val * (1.0 - sat * (1.0 - frac))
    # For each sector, which of (v, q, p, t) goes to R, G and B.
    choices = jnp.stack([val, q, p, t], axis=-1)
    table = jnp.array(
        [[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], dtype=jnp.int32
    )
    index = table[sector]  # (H, W, 3)
    return jnp.take_along_axis(choices, index, axis=-1)


def adjust_hue(image_HWC, shift):
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5])."""
    hsv = rgb_to_hsv(image_HWC)
    hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
    return jnp.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def color_jitter(key, image_HWC, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1):
    """torchvision ColorJitter on one image: random factors and order; zero strengths skipped."""
    u = jax.random.uniform(key, (8,))  # 4 factors, then 4 sort keys for a random order

    def factor(v, s):
        lo = max(0.0, 1.0 - s)
        return lo + (1.0 + s - lo) * v

    b = factor(u[0], brightness)
    c = factor(u[1], contrast)
    s = factor(u[2], saturation)
    h = hue * (2.0 * u[3] - 1.0)
    identity = lambda x: x  # noqa: E731
    ops = [
        (lambda x: adjust_brightness(x, b)) if brightness > 0 else identity,
        (lambda x: adjust_contrast(x, c)) if contrast > 0 else identity,
        (lambda x: adjust_saturation(x, s)) if saturation > 0 else identity,
        (lambda x: adjust_hue(x, h)) if hue > 0 else identity,
    ]
    if all(op is identity for op in ops):
        return image_HWC
    order = jnp.argsort(u[4:])  # a uniformly random permutation of the four ops
    # A loop over the four positions keeps one copy of each op in the compiled graph.
    return jax.lax.fori_loop(0, 4, lambda i, x: jax.lax.switch(order[i], ops, x), image_HWC)


# ----------------------------------------------------------------------------- blur, solarize


def gaussian_blur(image_HWC, sigma, kernel_size: int):
    """Separable Gaussian blur with reflect padding (torchvision GaussianBlur)."""
    radius = kernel_size // 2
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    weights = jnp.exp(-0.5 * jnp.square(offsets / sigma))
    weights = weights / jnp.sum(weights)
    height, width = image_HWC.shape[0], image_HWC.shape[1]
    padded = jnp.pad(image_HWC, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(weights[k] * padded[k : k + height] for k in range(kernel_size))
    return sum(weights[k] * rows[:, k : k + width] for k in range(kernel_size))


def solarize(image_HWC, threshold: float = 0.5):
    """Invert the pixels at or above ``threshold``."""
    return jnp.where(image_HWC >= threshold, 1.0 - image_HWC, image_HWC)


# ----------------------------------------------------------------------------- pipeline


def augment_image(key, image_HWC, config: AugmentConfig):
    """One random view of one ``(H, W, 3)`` image in [0, 1]."""
    k_crop, k_jit, k_rest = jax.random.split(key, 3)
    # flip, jitter-apply, grayscale, blur-apply, blur sigma, solarize: one draw for all.
    u = jax.random.uniform(k_rest, (6,))
    height, width = image_HWC.shape[0], image_HWC.shape[1]
    size = config.output_size or (height, width)
    x = image_HWC.astype(jnp.float32)
    if config.crop:
        top, left, h, w = sample_crop_box(
            k_crop, height, width, config.crop_scale, config.crop_ratio, config.crop_attempts
        )
        x = resized_crop(x, top, left, h, w, size, config.interpolation)
    elif tuple(size) != (height, width):
        x = resized_crop(x, 0, 0, height, width, size, config.interpolation)
    if config.flip_p > 0:
        x = jnp.where(u[0] < config.flip_p, x[:, ::-1], x)
    strengths = (config.brightness, config.contrast, config.saturation, config.hue)
    if config.jitter_p > 0 and max(strengths) > 0:
        jittered = color_jitter(k_jit, x, *strengths)
        x = jnp.where(u[1] < config.jitter_p, jittered, x)
    if config.grayscale_p > 0:
        gray = jnp.broadcast_to(rgb_to_grayscale(x), x.shape)
        x = jnp.where(u[2] < config.grayscale_p, gray, x)
    if config.blur_p > 0:
        sigma = config.blur_sigma[0] + (config.blur_sigma[1] - config.blur_sigma[0]) * u[4]
        blurred = gaussian_blur(x, sigma, config.blur_kernel_size)
        x = jnp.where(u[3] < config.blur_p, blurred, x)
    if config.solarize_p > 0:
        x = jnp.where(u[5] < config.solarize_p, solarize(x, config.solarize_threshold), x)
    return x


def augment_batch(key, images_NHWC, config: AugmentConfig):
    """One view of every image; sample *n* uses ``jax.random.split(key, N)[n]``."""
    keys = jax.random.split(key, images_NHWC.shape[0])
    return jax.vmap(functools.partial(augment_image, config=config))(keys, images_NHWC)


def make_views(key, images_NHWC, config: ViewAugmentConfig):
    """Two independently augmented views ``(view1_NHWC, view2_NHWC)`` of a batch in [0, 1]."""
    k1, k2 = jax.random.split(key)
    if config.view1 != config.view2:
        view1 = augment_batch(k1, images_NHWC, config.view1)
        return view1, augment_batch(k2, images_NHWC, config.view2)
    # Symmetric recipe: one vmap over both views (same keys and result, half the compiled graph).
    n = images_NHWC.shape[0]
    keys = jnp.concatenate([jax.random.split(k1, n), jax.random.split(k2, n)])
    both = jax.vmap(functools.partial(augment_image, config=config.view1))(
        keys, jnp.concatenate([images_NHWC, images_NHWC])
    )
    return both[:n], both[n:]

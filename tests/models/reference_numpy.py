"""Plain numpy forward passes of the PyTorch networks, in NCHW layout, reading PyTorch state dicts.

They are written independently of ddjax (no shared code, different memory layout) so tests can
check the Flax networks and the PyTorch interchange against them.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv(x, weight, bias=None, stride=1, padding=0):
    """PyTorch Conv2d: x (N,C,H,W), weight (O,C,kh,kw)."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = weight.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    y = np.einsum("nchwij,ocij->nohw", windows, weight)
    return y if bias is None else y + bias[None, :, None, None]


def instance_norm(x, weight, bias, eps=1e-5):
    """GroupNorm(C, C): statistics per sample and channel over H, W; biased variance."""
    mean = x.mean(axis=(2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight[None, :, None, None] + bias[None, :, None, None]


def batch_norm_eval(x, weight, bias, running_mean, running_var, eps=1e-5):
    def per_channel(v):
        return v[None, :, None, None]

    return (x - per_channel(running_mean)) / np.sqrt(per_channel(running_var) + eps) * per_channel(
        weight
    ) + per_channel(bias)


def avg_pool(x, k):
    n, c, h, w = x.shape
    x = x[:, :, : h // k * k, : w // k * k]
    return x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))


def relu(x):
    return np.maximum(x, 0.0)


def norm(sd, prefix, x, kind):
    if kind == "instancenorm":
        return instance_norm(x, sd[prefix + ".weight"], sd[prefix + ".bias"])
    return batch_norm_eval(x, *(sd[prefix + s] for s in (".weight", ".bias", ".running_mean",
                                                          ".running_var")))


def convnet(sd, x, depth, kind="instancenorm"):
    """MTT ConvNet: Sequential(conv, norm, relu, pool) * depth, NCHW flatten, classifier."""
    step = 3 if kind == "none" else 4
    for d in range(depth):
        i = step * d
        x = conv(x, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1)
        if kind != "none":
            x = norm(sd, f"features.{i + 1}", x, kind)
        x = avg_pool(relu(x), 2)
    x = x.reshape(x.shape[0], -1)
    return x @ sd["classifier.weight"].T + sd["classifier.bias"]


def resnet(sd, x, stage_sizes, stem_padding, pooling):
    """torchvision-named CIFAR ResNet (BasicBlocks), eval-mode batch norm."""
    x = relu(norm(sd, "bn1", conv(x, sd["conv1.weight"], padding=stem_padding), "batchnorm"))
    for i, blocks in enumerate(stage_sizes):
        for j in range(blocks):
            p = f"layer{i + 1}.{j}"
            stride = 2 if i > 0 and j == 0 else 1
            y = conv(x, sd[p + ".conv1.weight"], stride=stride, padding=1)
            y = relu(norm(sd, p + ".bn1", y, "batchnorm"))
            y = norm(sd, p + ".bn2", conv(y, sd[p + ".conv2.weight"], padding=1), "batchnorm")
            if p + ".downsample.0.weight" in sd:
                x = norm(sd, p + ".downsample.1", conv(x, sd[p + ".downsample.0.weight"],
                                                        stride=stride), "batchnorm")
            x = relu(y + x)
    x = x.mean(axis=(2, 3), keepdims=True) if pooling == "global" else avg_pool(x, 4)
    x = x.reshape(x.shape[0], -1)
    return x @ sd["fc.weight"].T + sd["fc.bias"] if "fc.weight" in sd else x


def random_state_dict(names_and_shapes, seed=0):
    """Random PyTorch-layout weights that keep activations O(1): He-scaled kernels, BN weights
    and variances near 1, small biases and means."""
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in names_and_shapes:
        if name.endswith("num_batches_tracked"):
            sd[name] = np.array(7, np.int64)
        elif name.endswith("weight") and len(shape) > 1:
            sd[name] = rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif name.endswith(("weight", "running_var")):
            sd[name] = rng.uniform(0.5, 1.5, size=shape)
        else:
            sd[name] = rng.normal(size=shape) * 0.1
    return {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in sd.items()}

"""CIFAR-style ResNets with BasicBlocks: the SSL teachers and MKDT's ResNet10/18 evaluation nets.

Stem: 3x3 stride-1 convolution without bias (padding 1, or 2 for KRR-ST's Barlow Twins teacher),
batch norm, ReLU, no max-pool; then four stages of BasicBlocks (64-512 channels, 1x1 conv + norm
shortcuts). Pooling is 'global' (as torchvision's resnet18 teacher) or 'avg4' (``avg_pool2d(out,
4)``, MKDT's evaluation ResNets). Names follow torchvision ('layer1_0', 'downsample_0', 'fc', ...)
and parameters are created in PyTorch's ``parameters()`` order (see ``ddjax.models.params``).
"""

from typing import ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ddjax.errors import DdjaxError
from ddjax.models.conv import Conv
from ddjax.models.layers import Dense, Encoder, avg_pool, check_norm, make_norm, normalize

POOLINGS = ("global", "avg4")
STAGE_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (torchvision's BasicBlock)."""

    planes: int
    stride: int
    norm: str
    conv_impl: str
    init_scheme: str

    @nn.compact
    def __call__(self, x, train: bool = False):
        def conv(features, k, stride, padding, name):
            return Conv(features, k, stride, padding, use_bias=False, impl=self.conv_impl,
                        init_scheme=self.init_scheme, name=name)

        y = conv(self.planes, 3, self.stride, 1, "conv1")(x)
        y = nn.relu(normalize(make_norm(self.norm, "bn1"), y, train))
        y = conv(self.planes, 3, 1, 1, "conv2")(y)
        y = normalize(make_norm(self.norm, "bn2"), y, train)
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = conv(self.planes, 1, self.stride, 0, "downsample_0")(x)
            x = normalize(make_norm(self.norm, "downsample_1"), x, train)
        return nn.relu(y + x)


class ResNet(Encoder):
    """A CIFAR ResNet; `stage_sizes` (2, 2, 2, 2) is ResNet-18, (1, 1, 1, 1) ResNet-10.

    `num_outputs=0` leaves out the linear head 'fc'. `init_scheme` names a scheme of
    ddjax.models.init ('torchvision' for the teachers, 'torch' for MKDT's evaluation nets).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    num_outputs: int = 0
    stem_padding: int = 1
    pooling: str = "global"
    norm: str = "batchnorm"
    conv_impl: str = "auto"
    init_scheme: str = "torchvision"

    head_name: ClassVar[str] = "fc"

    def _block_names(self):
        return [f"layer{i + 1}_{j}" for i, n in enumerate(self.stage_sizes) for j in range(n)]

    def setup(self):
        check_norm(self.norm)
        if self.pooling not in POOLINGS:
            raise DdjaxError(
                f"unknown pooling {self.pooling!r}; expected one of {', '.join(POOLINGS)}"
            )
        if len(self.stage_sizes) != len(STAGE_WIDTHS):
            raise DdjaxError(
                f"a ResNet needs {len(STAGE_WIDTHS)} stage sizes, got {self.stage_sizes}"
            )
        self.conv1 = Conv(STAGE_WIDTHS[0], 3, 1, self.stem_padding, use_bias=False,
                          impl=self.conv_impl, init_scheme=self.init_scheme)
        self.bn1 = make_norm(self.norm)
        for i, n in enumerate(self.stage_sizes):
            for j in range(n):
                block = BasicBlock(STAGE_WIDTHS[i], 2 if i > 0 and j == 0 else 1, self.norm,
                                   self.conv_impl, self.init_scheme)
                setattr(self, f"layer{i + 1}_{j}", block)
        head = Dense(self.num_outputs, init_scheme=self.init_scheme) if self.num_outputs else None
        self.fc = head

    def trunk(self, x, train: bool = False):
        """The pooled layer4 map: (N, 1, 1, 512) for 'global', (N, H/4, W/4, 512) for 'avg4'."""
        x = nn.relu(normalize(self.bn1, self.conv1(x), train))
        for name in self._block_names():
            x = getattr(self, name)(x, train)
        if self.pooling == "global":
            return jnp.mean(x, axis=(1, 2), keepdims=True)
        return avg_pool(x, 4)

"""The ConvNet of MTT / MKDT: `depth` blocks of conv3x3 -> norm -> ReLU -> avgpool 2x2, then linear.

With the defaults (width 128, depth 3, instance norm, 512 outputs) on 32x32 images it is MKDT's
student for CIFAR (1,348,608 parameters); depth 4 on 64x64 is its ConvNetD4 for Tiny ImageNet.
Submodules are named after the PyTorch ``nn.Sequential`` indices ('features_0' conv, 'features_1'
norm, 'features_4', ..., 'classifier'; four slots per block, three without a norm), and parameters
are created in PyTorch's ``parameters()`` order, so ``ddjax.models.params`` maps them one to one.
"""

from typing import ClassVar

import flax.linen as nn

from ddjax.models.conv import Conv
from ddjax.models.layers import Dense, Encoder, avg_pool, check_norm, make_norm, normalize


class ConvNet(Encoder):
    """MTT's ConvNet. `num_outputs=0` leaves out the classifier; `init_scheme` names a scheme of
    ddjax.models.init (a field cannot be called `init`, which is the method of ``nn.Module``)."""

    width: int = 128
    depth: int = 3
    norm: str = "instancenorm"
    num_outputs: int = 512
    conv_impl: str = "auto"
    init_scheme: str = "torch"

    head_name: ClassVar[str] = "classifier"

    def _slots(self):
        """(conv name, norm name or None) of each block, after the PyTorch Sequential indices."""
        step = 3 if self.norm == "none" else 4
        return [
            (f"features_{step * d}", None if self.norm == "none" else f"features_{step * d + 1}")
            for d in range(self.depth)
        ]

    def setup(self):
        check_norm(self.norm)
        for conv_name, norm_name in self._slots():
            conv = Conv(self.width, 3, padding=1, impl=self.conv_impl, init_scheme=self.init_scheme)
            setattr(self, conv_name, conv)
            if norm_name is not None:
                setattr(self, norm_name, make_norm(self.norm))
        head = Dense(self.num_outputs, init_scheme=self.init_scheme) if self.num_outputs else None
        self.classifier = head

    def trunk(self, x, train: bool = False):
        """The last pooled feature map (N, side / 2**depth, side / 2**depth, width)."""
        for conv_name, norm_name in self._slots():
            x = getattr(self, conv_name)(x)
            x = normalize(getattr(self, norm_name) if norm_name else None, x, train)
            x = avg_pool(nn.relu(x), 2)
        return x

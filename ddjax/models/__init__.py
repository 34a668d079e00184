"""Networks of ddjax (Flax linen) and their parameters: ConvNet, CIFAR ResNets, a registry by name,
PyTorch state-dict interchange and state-dict files, and batched inference."""

from ddjax.models.conv import Conv, conv2d, resolve_conv_impl
from ddjax.models.convnet import ConvNet
from ddjax.models.init import INIT_SCHEMES, layer_initializers
from ddjax.models.params import TorchLayout, from_torch_state_dict, to_torch_state_dict
from ddjax.models.registry import MODEL_NAMES, build_model, has_batch_stats, init_params
from ddjax.models.resnet import ResNet

__all__ = [
    "INIT_SCHEMES",
    "MODEL_NAMES",
    "Conv",
    "ConvNet",
    "ResNet",
    "TorchLayout",
    "build_model",
    "conv2d",
    "from_torch_state_dict",
    "has_batch_stats",
    "init_params",
    "layer_initializers",
    "resolve_conv_impl",
    "to_torch_state_dict",
]

"""Conversion of ddjax network variables to and from the PyTorch state dict they mirror.

:class:`TorchLayout` maps each Flax variable of a network (MTT's ConvNet, torchvision-named
ResNets) to its PyTorch name and layout: ``_<digits>`` -> ``.<digits>`` in module names, leaves
renamed (kernel/scale -> weight, mean/var -> running_mean/running_var), kernels HWIO <-> OIHW and
(in, out) <-> (out, in), the head's input rows permuted between NHWC and NCHW flattening, and
PyTorch's ``num_batches_tracked`` (exported as 0, ignored on import). Entries are in PyTorch's
state-dict order.
"""

import dataclasses
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.errors import DdjaxError
from ddjax.models.layers import Encoder
from ddjax.models.registry import dummy_input

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias",
               "mean": "running_mean", "var": "running_var"}
_LEAF_RANK = {"kernel": 0, "scale": 0, "bias": 1, "mean": 2, "var": 3}
COUNTER = "num_batches_tracked"


@dataclasses.dataclass(frozen=True)
class TorchEntry:
    """One PyTorch state-dict entry and the Flax variable it corresponds to.

    `kind` is 'conv' (HWIO <-> OIHW), 'linear' ((in, out) <-> (out, in)), 'head' (linear whose
    input is a flattened (C, H, W) = `chw` map), 'same' (vectors) or 'counter' (num_batches_tracked,
    no Flax variable: `collection` is '' and `path` empty).
    """

    torch_name: str
    collection: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    kind: str
    chw: tuple[int, int, int] | None = None

    @property
    def torch_shape(self) -> tuple[int, ...]:
        s = self.shape
        if self.kind == "conv":
            return (s[3], s[2], s[0], s[1])
        if self.kind in ("linear", "head"):
            return (s[1], s[0])
        return s

    def to_torch(self, a):
        """Flax layout -> PyTorch layout (numpy or jax arrays)."""
        if self.kind == "conv":
            return a.transpose(3, 2, 0, 1)
        if self.kind == "linear":
            return a.T
        if self.kind == "head":
            c, h, w = self.chw
            return a.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * h * w)
        return a

    def from_torch(self, a):
        """PyTorch layout -> Flax layout (numpy or jax arrays)."""
        if self.kind == "conv":
            return a.transpose(2, 3, 1, 0)
        if self.kind == "linear":
            return a.T
        if self.kind == "head":
            c, h, w = self.chw
            return a.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
        return a


def torch_module_name(path) -> str:
    """'layer1_0', 'downsample_1' -> 'layer1.0.downsample.1'."""
    return ".".join(re.sub(r"_(\d+)", r".\1", part) for part in path)


def _leaf_paths(tree, prefix=()):
    """(path, leaf) pairs of nested dicts, in insertion order."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaf_paths(value, prefix + (key,))
        else:
            yield prefix + (key,), value


@dataclasses.dataclass(frozen=True)
class TorchLayout:
    """The PyTorch state-dict layout of a ddjax network, in state-dict order."""

    model_name: str
    entries: tuple[TorchEntry, ...]

    @classmethod
    def from_model(cls, model: Encoder, image_size=(32, 32), channels: int = 3) -> "TorchLayout":
        """Derive the layout of `model` on images of `image_size`, without computing anything.

        Flax creates variables in the order the layers run, which is the order of PyTorch's
        modules here. ``jax.eval_shape`` returns dicts with sorted keys, so the creation order is
        read inside the traced function.
        """
        x = dummy_input(image_size, channels)
        created = []

        def init(key):
            variables = model.init(key, x)
            created.extend((path, leaf.shape, leaf.dtype) for path, leaf in _leaf_paths(variables))
            return variables

        shapes = jax.eval_shape(init, jax.random.key(0))
        _, h, w, c = jax.eval_shape(lambda v: model.apply(v, x, method="trunk"), shapes).shape

        modules = {}  # module path -> [(leaf name, collection, shape, dtype)], first-seen order
        for (collection, *module, leaf), shape, dtype in created:
            modules.setdefault(tuple(module), []).append((leaf, collection, shape, dtype))
        entries = []
        for module, leaves in modules.items():
            prefix = torch_module_name(module)
            for leaf, collection, shape, dtype in sorted(leaves, key=lambda t: _LEAF_RANK[t[0]]):
                kind, chw = "same", None
                if leaf == "kernel":
                    kind = "conv" if len(shape) == 4 else "linear"
                    if module == (model.head_name,) and h * w > 1:
                        kind, chw = "head", (c, h, w)
                name = f"{prefix}.{_TORCH_LEAF[leaf]}"
                entries.append(TorchEntry(name, collection, module + (leaf,), tuple(shape),
                                          np.dtype(dtype), kind, chw))
            if any(leaf == "mean" for leaf, *_ in leaves):
                entries.append(TorchEntry(f"{prefix}.{COUNTER}", "", (), (), np.dtype(np.int64),
                                          "counter"))
        return cls(type(model).__name__, tuple(entries))


def _get(variables, entry: TorchEntry):
    node = variables.get(entry.collection) if isinstance(variables, Mapping) else None
    for key in entry.path:
        node = node.get(key) if isinstance(node, Mapping) else None
    where = "/".join((entry.collection,) + entry.path)
    if node is None:
        raise DdjaxError(f"variables have no {where} (expected for PyTorch {entry.torch_name})")
    if tuple(node.shape) != entry.shape:
        raise DdjaxError(f"variable {where} has shape {tuple(node.shape)}, expected {entry.shape}")
    return node


def _put(tree: dict, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _listing(names, limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def to_torch_state_dict(variables: dict, layout: TorchLayout) -> dict[str, np.ndarray]:
    """PyTorch state dict (numpy arrays, state-dict order) of the variables of a ddjax network."""
    state = {}
    for e in layout.entries:
        if e.kind == "counter":
            state[e.torch_name] = np.zeros((), np.int64)
        else:
            state[e.torch_name] = np.ascontiguousarray(e.to_torch(np.asarray(_get(variables, e))))
    return state


def from_torch_state_dict(state_dict, layout: TorchLayout) -> dict:
    """Variables of a ddjax network from a PyTorch state dict (arrays or CPU tensors).

    Every name must be present with its exact shape (num_batches_tracked may be absent); any
    missing, unexpected or wrongly shaped entry raises DdjaxError naming them, with nothing loaded.
    """
    expected = {e.torch_name: e for e in layout.entries}
    missing = [n for n, e in expected.items() if n not in state_dict and e.kind != "counter"]
    unexpected = [n for n in state_dict if n not in expected]
    given_shapes = {n: tuple(np.shape(v)) for n, v in state_dict.items()}
    wrong = [f"{n} {given_shapes[n]} (expected {e.torch_shape})" for n, e in expected.items()
             if e.kind != "counter" and given_shapes.get(n, e.torch_shape) != e.torch_shape]
    problems = [f"{label}: {_listing(names)}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
    if problems:
        raise DdjaxError(f"state dict does not fit {layout.model_name}: {'; '.join(problems)}")
    variables = {}
    for e in layout.entries:
        if e.kind != "counter":
            value = e.from_torch(np.asarray(state_dict[e.torch_name], dtype=e.dtype))
            _put(variables, (e.collection,) + e.path, jnp.asarray(value))
    return variables


"""The standard layers. Linear, Embedding, LayerNorm and RMSNorm are backed by the C++ layers
(cpp/layers/), which own the parameter tensors; the module registers the same tensors as its
Parameters, so optimizers, state_dict and the C++ forward all see one set of weights. (A norm
over several trailing dims is the exception: see _Norm.)"""
import math
import numbers

import llmscratch_core as _core

from .. import functional as F
from ..functional._activations import check_gelu_approximate
from ..functional._checks import require_int
from ..functional._dropout import is_probability
from ..functional._embedding import padding_row
from ..functional._norms import _as_shape
from .._dtype import as_device, as_dtype, float32
from ..autograd import no_grad
from .module import Module, Parameter


class _CppLayer(Module):
    """Registers the C++ layer's parameters under the same names."""

    def __init__(self, impl):
        super().__init__()
        object.__setattr__(self, "_impl", impl)
        for name, t in impl.named_parameters():
            setattr(self, name, Parameter(t))
        for name in ("weight", "bias"):
            if hasattr(impl, name) and getattr(impl, name) is None:
                self.register_parameter(name, None)

    def forward(self, x):
        return self._impl.forward(x)


def _dd(dtype, device):
    return as_dtype(dtype, float32), as_device(device)



class Linear(_CppLayer):
    """y = x W^T + b with W (out_features, in_features), as torch.nn.Linear."""

    def __init__(self, in_features, out_features, bias=True, dtype=None, device=None):
        in_features = require_int(in_features, "in_features", "Linear")
        out_features = require_int(out_features, "out_features", "Linear")
        super().__init__(_core.layers.Linear(in_features, out_features, bias, *_dd(dtype, device)))
        self.in_features, self.out_features = in_features, out_features

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(_CppLayer):
    """Rows of a (num_embeddings, embedding_dim) table, initialised N(0, 1). padding_idx, as
    torch's: that row starts at zeros and gets no gradient from the lookup."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=None, device=None):
        num_embeddings = require_int(num_embeddings, "num_embeddings", "Embedding")
        embedding_dim = require_int(embedding_dim, "embedding_dim", "Embedding")
        super().__init__(_core.layers.Embedding(num_embeddings, embedding_dim, *_dd(dtype, device)))
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None:
            padding_idx = padding_row(padding_idx, num_embeddings, "Embedding")
            with no_grad():
                self.weight[padding_idx] = 0.0
        self.padding_idx = padding_idx

    def forward(self, ids):
        if self.padding_idx is None:
            return self._impl.forward(ids)
        return F.embedding(ids, self.weight, self.padding_idx)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}" + (
            f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


class _Norm(_CppLayer):
    """A norm over the trailing normalized_shape dims. One dim: the C++ layer's forward. Several,
    as torch's nn.LayerNorm((C, H)): the parameters have that shape (state_dicts trade with
    torch's) and the forward is the functional one, which views those dims as one; the C++ layer
    then holds only eps (its flat tensors are dropped)."""

    def __init__(self, name, normalized_shape, make_impl):
        shape = _as_shape(name, normalized_shape)
        if not shape or any(n < 0 for n in shape):
            raise ValueError(f"{name}: normalized_shape must be one or more sizes >= 0, got {shape}")
        self.normalized_shape = shape  # before the C++ layer's parameters are registered (_flat)
        super().__init__(make_impl(math.prod(shape)))
        if not self._flat:
            for pname, p in list(self._parameters.items()):
                if p is not None:
                    setattr(self, pname, Parameter(p.detach().reshape(shape).clone()))
                    setattr(self._impl, pname, None)

    @property
    def _flat(self):
        return len(self.normalized_shape) == 1

    def _sync_impl(self, name, value):
        if self._flat:  # the C++ layer's forward uses the module's tensors
            super()._sync_impl(name, value)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class LayerNorm(_Norm):
    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=None, device=None):
        super().__init__("LayerNorm", normalized_shape, lambda n: _core.layers.LayerNorm(
            n, eps, elementwise_affine, bias, *_dd(dtype, device)))

    @property
    def eps(self):
        return self._impl.eps

    @eps.setter
    def eps(self, value):  # the C++ layer's own: assigned later, it still sets the forward's
        self._impl.eps = float(value)

    def forward(self, x):
        if self._flat:
            return self._impl.forward(x)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(_Norm):
    """eps=None (the default, as torch's): the machine epsilon of the input's type, chosen per
    call (machine_eps in functional/_norms.py), since the module may be cast after it is made."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, dtype=None, device=None):
        super().__init__("RMSNorm", normalized_shape, lambda n: _core.layers.RMSNorm(
            n, 0.0, elementwise_affine, *_dd(dtype, device)))
        self.eps = eps

    @property
    def eps(self):
        return self.__dict__["_eps"]

    @eps.setter
    def eps(self, value):  # kept in step with the C++ layer's: assigned later, it still sets the forward's
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"RMSNorm: eps must be a number or None, got {value!r}")
        self.__dict__["_eps"] = value
        self._impl.eps = 0.0 if value is None else float(value)

    def forward(self, x):
        if self._flat and self.eps is not None:
            return self._impl.forward(x)
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class Dropout(Module):
    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not is_probability(p):
            raise ValueError(f"Dropout: p must be a number in [0, 1], got {p!r}")
        if inplace:
            raise NotImplementedError("Dropout: inplace=True is not supported (the mask is applied out of place)")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    def __init__(self, approximate="none"):
        super().__init__()
        check_gelu_approximate("GELU", approximate)
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class SiLU(Module):
    def forward(self, x):
        return F.silu(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Identity(Module):
    def forward(self, x):
        return x

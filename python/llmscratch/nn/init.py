"""In-place parameter initialisers drawing from the Philox generator."""
import math

from .._creation import rand, randn
from ..autograd import no_grad


def uniform_(t, a=0.0, b=1.0):
    with no_grad():
        return t.copy_(rand(*t.shape, dtype=t.dtype, device=t.device) * (b - a) + a)


def normal_(t, mean=0.0, std=1.0):
    with no_grad():
        return t.copy_(randn(*t.shape, dtype=t.dtype, device=t.device) * std + mean)


def zeros_(t):
    with no_grad():
        return t.zero_()


def ones_(t):
    with no_grad():
        return t.fill_(1.0)


def linear_bound(fan_in: int) -> float:
    """torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

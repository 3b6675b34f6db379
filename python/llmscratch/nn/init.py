"""In-place parameter initialisers drawing from the Philox generator."""
import math

from .._creation import rand, randn
from .._dtype import float32, float64
from .._tensor import where
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


def constant_(t, val):
    with no_grad():
        return t.fill_(val)


def calculate_gain(nonlinearity, param=None):
    """torch.nn.init.calculate_gain: the factor that keeps activations' variance through the
    nonlinearity (relu sqrt(2), tanh 5/3, leaky_relu sqrt(2 / (1 + slope^2)), selu 3/4, 1 for the
    linear ones)."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"calculate_gain: negative_slope {slope!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(t):
    """(fan_in, fan_out) as torch: a weight (out, in, *kernel) has fan_in = in * kernel size and
    fan_out = out * kernel size."""
    if t.ndim < 2:
        raise ValueError("fan in and fan out can not be computed for a tensor of fewer than 2 dimensions")
    receptive = math.prod(t.shape[2:])
    return t.shape[1] * receptive, t.shape[0] * receptive


def _fan(t, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return fan_in if mode == "fan_in" else fan_out


def xavier_uniform_(t, gain=1.0):
    """U(-a, a), a = gain sqrt(6 / (fan_in + fan_out)) (Glorot and Bengio 2010)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(t, -a, a)


def xavier_normal_(t, gain=1.0):
    """N(0, std^2), std = gain sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return normal_(t, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def kaiming_uniform_(t, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """U(-bound, bound), bound = gain sqrt(3 / fan) (He et al. 2015); torch's defaults."""
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / _fan(t, mode))
    return uniform_(t, -bound, bound)


def kaiming_normal_(t, a=0, mode="fan_in", nonlinearity="leaky_relu"):
    """N(0, std^2), std = gain / sqrt(fan)."""
    return normal_(t, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(_fan(t, mode)))


# erfinv(x) = p(w) x with w = -log((1 - x)(1 + x)): Giles' polynomials ("Approximating the erfinv
# function", GPU Computing Gems, 2011), about single-precision accuracy; the first for w < 5
# (|x| < 0.9966), in w - 2.5, the second for the tails, in sqrt(w) - 3. Highest power first.
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


def _horner(coefficients, w):
    p = coefficients[0]
    for c in coefficients[1:]:
        p = p * w + c
    return p


def _erfinv(x):
    """erfinv of a float tensor in (-1, 1) (+-inf at +-1)."""
    w = -((1.0 - x) * (1.0 + x)).log()
    central = _horner(_ERFINV_CENTRAL, w - 2.5)
    tail = _horner(_ERFINV_TAIL, w.sqrt() - 3.0)
    return where(w < 5.0, central, tail) * x


def trunc_normal_(t, mean=0.0, std=1.0, a=-2.0, b=2.0):
    """N(mean, std^2) truncated to [a, b], as torch.nn.init.trunc_normal_: uniform draws between
    the bounds' cdf values through the inverse cdf (in float32, float64 for a float64 tensor),
    clamped to [a, b] against rounding."""
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"trunc_normal_: mean must be finite and std finite and positive, got {mean}, {std}")
    if not a < b:
        raise ValueError(f"trunc_normal_: the bounds must have a < b, got a = {a}, b = {b}")

    def erf_of(v):  # 2 cdf(v) - 1 of N(mean, std^2)
        return math.erf((v - mean) / (std * math.sqrt(2.0))) if math.isfinite(v) else math.copysign(1.0, v)

    lo, hi = erf_of(a), erf_of(b)
    work = float64 if t.dtype == float64 else float32
    with no_grad():
        u = rand(*t.shape, dtype=work, device=t.device) * (hi - lo) + lo
        return t.copy_((_erfinv(u) * (std * math.sqrt(2.0)) + mean).clamp(a, b))

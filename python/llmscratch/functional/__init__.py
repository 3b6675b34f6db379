"""Every op as a function, torch.nn.functional-style. Each submodule wraps one family of
registered ops; all of them dispatch through the op registry."""
from ._elementwise import *  # noqa: F401,F403
from ._activations import *  # noqa: F401,F403
from ._softmax import *  # noqa: F401,F403
from ._norms import *  # noqa: F401,F403
from ._losses import *  # noqa: F401,F403
from ._embedding import *  # noqa: F401,F403
from ._dropout import *  # noqa: F401,F403
from ._rope import *  # noqa: F401,F403
from ._attention import *  # noqa: F401,F403
from ._shape_ops import *  # noqa: F401,F403
from ._index_ops import *  # noqa: F401,F403
from ._moe import *  # noqa: F401,F403
from . import (_activations, _attention, _dropout, _elementwise, _embedding, _index_ops, _losses,
               _moe, _norms, _rope, _shape_ops, _softmax)

__all__ = [name for m in (_elementwise, _activations, _softmax, _norms, _losses, _embedding,
                          _dropout, _rope, _attention, _shape_ops, _index_ops, _moe) for name in m.__all__]

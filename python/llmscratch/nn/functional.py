"""``llmscratch.nn.functional`` is ``llmscratch.functional`` (the torch spelling)."""
from ..functional import *  # noqa: F401,F403

"""Triton backend tests. Without a GPU the kernels run in triton's interpreter on CPU tensors:
TRITON_INTERPRET must be set before triton is first imported (it decides at triton.jit time),
so it is set here, when this folder is collected."""
import os

import llmscratch as ls

if not ls.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    # The interpreter evaluates masked-off lanes too (exp(-inf - -inf) and the like, discarded by
    # tl.where); numpy's warnings about them say nothing about the results.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")

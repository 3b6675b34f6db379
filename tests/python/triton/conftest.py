"""Triton backend tests. Without a GPU the kernels run in triton's interpreter on CPU tensors:
TRITON_INTERPRET must be set before triton is first imported (it decides at triton.jit time),
so it is set here, when this folder is collected."""
import os

import llmscratch as ls

if not ls.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

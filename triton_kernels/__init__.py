"""Triton kernels for llmscratch, installed as ``llmscratch.triton_kernels``.

One module per op stem (the same stems as ``cpp/ops`` and ``cuda/``); each registers its
forward and backward into the op registry as backend ``triton`` for CUDA tensors.
"""

"""Elementary functions of coefficients, which may be Python numbers or tensors.

A printed step (`unroll.lowering.eager.printer`) applies ``torch.exp`` and the like to whatever
involves a tensor; an expression of coefficients alone (``exp(-h)``) may meet a plain float,
given by the user to `Scheme.run`, or a tensor, a network's trainable parameter. These take both.
"""

from __future__ import annotations

import math

import torch


def exp(a):
    return torch.exp(a) if isinstance(a, torch.Tensor) else math.exp(a)


def log(a):
    return torch.log(a) if isinstance(a, torch.Tensor) else math.log(a)


def sqrt(a):
    return torch.sqrt(a) if isinstance(a, torch.Tensor) else math.sqrt(a)


def sin(a):
    return torch.sin(a) if isinstance(a, torch.Tensor) else math.sin(a)


def cos(a):
    return torch.cos(a) if isinstance(a, torch.Tensor) else math.cos(a)


def tanh(a):
    return torch.tanh(a) if isinstance(a, torch.Tensor) else math.tanh(a)


def unshared(buffer, outputs):
    """``buffer`` when none of the operator ``outputs`` lives in its memory, else None (a fresh
    tensor is then allocated): an output read after the buffer is first written must not see
    the new values."""
    if buffer is None:
        return None
    ptr = buffer.untyped_storage().data_ptr()
    for o in outputs:
        if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() == ptr:
            return None
    return buffer

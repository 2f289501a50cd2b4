"""The loss of the digits examples' training step (``train_digits.py``, ``train_digits_plain.py``).

It lives in its own module so it can be edited while a job runs: with ``--keep-running`` the
examples sync this folder to their procs (``sync_workspace(..., auto_reload=True, watch=True)``),
so after you save this file the trainers' next step runs the new code, without a restart. Try
``label_smoothing=0.2`` below and watch the printed loss jump.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def step_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss of one minibatch.

    Args:
        logits: float32 [batch, 10], the model's outputs.
        labels: int64 [batch], the digits.

    Returns:
        A 0-d float32 tensor.
    """
    import torch

    return torch.nn.functional.cross_entropy(logits, labels)

"""Distillation losses, each an nn.Module with the shapes it takes in its docstring (the torchtune habit)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_EPS = 1e-9


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class HiddenStateLoss(nn.Module):
    """Normalised MSE between a module's output and the teacher's hidden state at the end of the module's span.

    ||h_s - h_t||^2 / ||h_t||^2 per token, averaged over real tokens. Normalising makes the loss scale-free: T5's
    hidden states grow by orders of magnitude up the stack, and a raw MSE would let the top layers drown the rest.

    student, teacher: (B, T, C); mask: (B, T), 1 for real tokens.
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        err = (student.float() - teacher.float()).pow(2).sum(-1)  # (B, T)
        scale = teacher.float().pow(2).sum(-1).clamp_min(_EPS)  # (B, T)
        return _masked_mean(err / scale, mask)


class AttentionLoss(nn.Module):
    """KL(teacher || student) between attention distributions, averaged over heads and real query positions.

    student, teacher: (B, H, Q, K) probabilities (rows sum to 1; masked keys hold 0); query_mask: (B, Q).
    """

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        t, s = teacher.float(), student.float()
        kl = (t * (torch.log(t + _EPS) - torch.log(s + _EPS))).sum(-1)  # (B, H, Q)
        mask = query_mask[:, None, :].expand_as(kl)
        return _masked_mean(kl, mask)


class LogitLoss(nn.Module):
    """Temperature-scaled KL(teacher || student) over the vocabulary, times T^2 (Hinton et al., 2015).

    student, teacher: (B, T, V) logits; mask: (B, T).
    """

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tau = self.temperature
        log_s = F.log_softmax(student.float() / tau, dim=-1)
        log_t = F.log_softmax(teacher.float() / tau, dim=-1)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)  # (B, T)
        return _masked_mean(kl, mask) * tau * tau

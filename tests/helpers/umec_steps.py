"""UMEC training steps and eval logits on a (sharded) DLRM, as the distributed tests run them."""

from __future__ import annotations

from typing import Any, Iterable

import torch


def umec_steps(dmp: Any, umec: Any, batches: Iterable[Any]) -> None:
    """One forward/backward and ``umec.step()`` per batch, the batch masked by ``umec.feature_mask``."""
    dmp.train()
    for b in batches:
        loss, _ = dmp(umec.feature_mask(b))
        loss.backward()
        umec.step()
        umec.zero_grad()


def masked_logits(dmp: Any, umec: Any, batch: Any) -> torch.Tensor:
    """The eval-mode logits of ``batch`` through the feature mask (a detached copy); back to train mode."""
    dmp.eval()
    with torch.no_grad():
        _, (_, logits, _) = dmp(umec.feature_mask(batch))
    dmp.train()
    return logits.detach().clone()

"""A reward the training tests define: mean brightness of the edit inside the edit mask (whole frame without)."""
import torch


def brightness(batch) -> torch.Tensor:
    edited = batch.edited.mean(dim=-1)  # [N,T,H,W]
    if batch.masks is None:
        return edited.flatten(1).mean(1)
    m = batch.masks.float()
    return (edited * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1e-6)

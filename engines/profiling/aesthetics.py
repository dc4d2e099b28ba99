"""Aesthetic score: the LAION aesthetic predictor's MLP head over CLIP image embeddings.

The head is pluggable and loaded from a file (``.pth`` / ``.pt`` state dict or ``.safetensors``)
with LAION's layout (``layers.0`` 768->1024, ``layers.2`` ->128, ``layers.4`` ->64, ``layers.6``
->16, ``layers.7`` ->1, dropouts between); the input width is read from the weights, so a head
trained on another embedding width loads too. No file, no score: the stage is skipped and the
column stays absent (no fake number). ``save_head`` writes the same format, which is how the
active-curation engine ships a head trained from reviewers' labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["build_head", "load_head", "save_head", "score_embeddings"]


def build_head(dim: int = 768):
    """An untrained head of LAION's shape (``improved-aesthetic-predictor`` MLP)."""
    import torch.nn as nn

    head = nn.Module()
    head.layers = nn.Sequential(
        nn.Linear(dim, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )
    head.forward = lambda x: head.layers(x)  # plain Module + Sequential keeps LAION's key names
    return head


def _read_state(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    # accept "layers.0.weight", "model.layers.0.weight", "module.layers.0.weight"
    return {k[k.index("layers.") :]: v for k, v in state.items() if "layers." in k}


def load_head(path: str | Path):
    """(head in eval mode, input dim). Raises ValueError naming what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"aesthetic head weights not found: {path}")
    state = _read_state(path)
    if "layers.0.weight" not in state:
        raise ValueError(f"{path}: no LAION-style 'layers.N' weights found (keys: {sorted(state)[:5]})")
    dim = int(state["layers.0.weight"].shape[1])
    head = build_head(dim)
    head.load_state_dict(state)
    return head.eval(), dim


def save_head(head, path: str | Path) -> Path:
    """Write a head in the format ``load_head`` reads (safetensors when the suffix says so)."""
    import torch

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path


def score_embeddings(head, emb: np.ndarray) -> np.ndarray:
    """Scores for L2-normalised embeddings (n, dim) -> (n,) float32 (LAION scale ~1..10)."""
    import torch

    if len(emb) == 0:
        return np.zeros(0, np.float32)
    with torch.inference_mode():
        return head(torch.as_tensor(np.asarray(emb, np.float32))).squeeze(1).numpy().astype(np.float32)

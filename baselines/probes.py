"""Foundation-model encoders adapted four ways: heads on frozen embeddings and fine-tuning (issue 28).

The three probes take (B, D) embeddings, D the encoder's embedding width, which the embedding cache
computes once from the encoder's weights file (`pretrained`); a probe never builds its encoder.
`linear_probe` is eva's patch-classification head: one Linear over the embedding (eva's
configs/vision/pathology/offline/classification/{bach,breakhis}.yaml, `head: torch.nn.Linear`; its
leaderboard calls it a "single layer MLP" without a hidden activation). `mlp_probe` is
eva.core.models.networks.MLP with one hidden layer: ReLU, then Dropout (eva's default 0.0).
`knn_probe` votes among the training fold's embeddings. `finetune` trains the encoder itself on
images, all of its blocks or the last k, with layer-wise learning-rate decay.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ._registry import register
from .encoders import Encoder, create_encoder, encoder_dim

Distance = Literal["cosine", "euclidean"]
Weighting = Literal["uniform", "distance"]
# The memory rows scored against a batch at once: a (batch, chunk) matrix bounds kNN's memory.
_KNN_CHUNK = 8192
# Added to each class's vote share before the log, so that a class no neighbour voted for has a
# finite loss (log 1e-4 = -9.2) and softmax still gives the shares to four decimals.
_KNN_SMOOTHING = 1e-4
# Keeps distance weights finite for a neighbour at distance 0 (the query itself in the memory).
_DISTANCE_EPS = 1e-8


class EmbeddingHead(nn.Module):
    """A trainable head over (B, D) embeddings, cast to its own dtype (the cache may hold float16)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return {"logits": (B, C)} for embeddings (B, D)."""
        dtype = next(self.net.parameters()).dtype
        return {"logits": self.net(features.to(dtype))}


def _euclidean(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Return the (B, M) euclidean distances as |q|^2 - 2 q.m + |m|^2: unlike torch.cdist, which
    picks its method by the batch size, an exported program keeps that size free."""
    squared = queries.square().sum(1, keepdim=True) - 2 * queries @ memory.T + memory.square().sum(1)
    return squared.clamp_min(0).sqrt()


class KNNHead(nn.Module):
    """k nearest neighbours among memorised embeddings; no trainable parameters.

    The memory is a pair of buffers, so a checkpoint, the best epoch's state and an exported model
    carry it. `forward` returns the log of the neighbours' smoothed class shares, so that softmax
    gives the shares back.
    """

    memory: torch.Tensor
    memory_labels: torch.Tensor

    def __init__(self, dim: int, num_classes: int, *, k: int, distance: Distance, weighting: Weighting) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"knn_probe: k={k}: expected at least 1")
        if distance not in ("cosine", "euclidean") or weighting not in ("uniform", "distance"):
            raise ValueError(
                f"knn_probe: distance={distance!r}, weighting={weighting!r}: expected distance cosine or "
                "euclidean and weighting uniform or distance"
            )
        self.num_classes, self.k, self.distance, self.weighting = num_classes, k, distance, weighting
        self.register_buffer("memory", torch.empty(0, dim))
        self.register_buffer("memory_labels", torch.empty(0, dtype=torch.long))

    def memorise(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep the training fold's embeddings (N, D) and labels (N,) as the neighbours to vote;
        returns nothing. Cosine memories are stored unit-length, in the embeddings' float dtype."""
        features = features.detach().to(self.memory.device)
        if self.distance == "cosine":
            features = nn.functional.normalize(features.float(), dim=1).to(features.dtype)
        self.memory = features.clone()
        self.memory_labels = labels.detach().to(self.memory.device, torch.long).clone()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A fresh head's memory is empty: take the saved memory's shape before torch copies into it.
        for name in ("memory", "memory_labels"):
            if prefix + name in state_dict:
                saved = state_dict[prefix + name]
                setattr(self, name, torch.empty(saved.shape, dtype=saved.dtype, device=self.memory.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _neighbours(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the k best scores (B, k) and their memory rows, scanning the memory in chunks.

        The score is the cosine similarity or minus the euclidean distance: higher is nearer."""
        # The batch size is read as queries.shape[0], never len(): an exported program keeps it free.
        batch, k = queries.shape[0], min(self.k, len(self.memory))
        best = queries[:, :0]
        rows = best.long()
        for start in range(0, len(self.memory), _KNN_CHUNK):
            chunk = self.memory[start : start + _KNN_CHUNK].float()
            scores = queries @ chunk.T if self.distance == "cosine" else -_euclidean(queries, chunk)
            index = torch.arange(start, start + len(chunk), device=queries.device).expand(batch, -1)
            best, top = torch.cat([best, scores], 1).topk(k, dim=1)
            rows = torch.cat([rows, index], 1).gather(1, top)
        return best, rows

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return {"logits": (B, C)}, the log of the smoothed vote shares of the k nearest memories."""
        if not len(self.memory):
            raise RuntimeError("knn_probe has no memory: call memorise(features, labels) before evaluating")
        queries = features.float()
        if self.distance == "cosine":
            queries = nn.functional.normalize(queries, dim=1)
        scores, rows = self._neighbours(queries)
        if self.weighting == "uniform":
            weights = torch.ones_like(scores)
        else:
            distances = 1 - scores if self.distance == "cosine" else -scores
            weights = 1 / (distances.clamp_min(0) + _DISTANCE_EPS)
        votes = queries.new_zeros(queries.shape[0], self.num_classes)
        votes.scatter_add_(1, self.memory_labels[rows], weights)
        shares = votes / votes.sum(1, keepdim=True)
        return {"logits": torch.log((shares + _KNN_SMOOTHING) / (1 + self.num_classes * _KNN_SMOOTHING))}


def _dim(encoder: str, encoder_arch: dict[str, Any] | None) -> int:
    """Return the embedding width of `encoder` built with the constructor overrides `encoder_arch`."""
    return encoder_dim(encoder, **(encoder_arch or {}))


@register("linear_probe", framework="pytorch", input_size=224, input_kind="embedding")
def linear_probe(
    num_classes: int, pretrained: str | None = None, encoder: str = "uni", encoder_arch: dict[str, Any] | None = None
) -> nn.Module:
    """Return eva's head: one Linear over the embedding of `encoder` (`pretrained` is the encoder's
    weights file, which the embedding cache reads)."""
    return EmbeddingHead(nn.Linear(_dim(encoder, encoder_arch), num_classes))


@register("mlp_probe", framework="pytorch", input_size=224, input_kind="embedding")
def mlp_probe(
    num_classes: int,
    pretrained: str | None = None,
    encoder: str = "uni",
    encoder_arch: dict[str, Any] | None = None,
    hidden: int = 256,
    dropout: float = 0.0,
) -> nn.Module:
    """Return eva's MLP with one hidden layer over the embedding: Linear, ReLU, Dropout, Linear."""
    dim = _dim(encoder, encoder_arch)
    return EmbeddingHead(
        nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    )


@register("knn_probe", framework="pytorch", input_size=224, input_kind="embedding")
def knn_probe(
    num_classes: int,
    pretrained: str | None = None,
    encoder: str = "uni",
    encoder_arch: dict[str, Any] | None = None,
    k: int = 20,
    distance: Distance = "cosine",
    weighting: Weighting = "uniform",
) -> nn.Module:
    """Return a kNN head over the embedding (training calls its `memorise` with the training fold)."""
    return KNNHead(_dim(encoder, encoder_arch), num_classes, k=k, distance=distance, weighting=weighting)


def _layers(encoder: Encoder) -> list[list[nn.Parameter]]:
    """Return the encoder's parameters by depth: those before its blocks (patch and position
    embeddings, tokens), one list per block, then those after the blocks (the final norm)."""
    blocks = [list(block.parameters()) for block in encoder.blocks()]
    in_blocks = {id(p) for block in blocks for p in block}
    before: list[nn.Parameter] = []
    after: list[nn.Parameter] = []
    passed = False
    # Parameters come in module order: embeddings and tokens, the blocks, then the norms.
    for p in encoder.parameters():
        if id(p) in in_blocks:
            passed = True
        else:
            (after if passed else before).append(p)
    return [before, *blocks, after]


class FineTuned(nn.Module):
    """An encoder with a Linear head on its embedding, trained on images in [0, 1].

    `blocks` 0 trains every parameter; k > 0 only the last k blocks, the norms after them and the
    head (the rest get requires_grad False). `param_groups` gives each trainable depth its own
    learning rate, decaying by `layer_decay` per block from the head down (BEiT's, as MAE's
    util/lr_decay.py assigns it).
    """

    def __init__(self, encoder: Encoder, num_classes: int, *, blocks: int, layer_decay: float) -> None:
        super().__init__()
        depth = len(encoder.blocks())
        if not 0 <= blocks <= depth:
            raise ValueError(f"finetune: blocks={blocks}: expected 0 (all) to the encoder's depth {depth}")
        if not 0 < layer_decay <= 1:
            raise ValueError(f"finetune: layer_decay={layer_decay}: expected a value in (0, 1]")
        self.encoder, self.head, self.layer_decay = encoder, nn.Linear(encoder.dim, num_classes), layer_decay
        if blocks:
            frozen = [p for layer in _layers(encoder)[: depth + 1 - blocks] for p in layer]
            for p in frozen:
                p.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return {"logits": (B, C)} for images (B, 3, H, W) in [0, 1]."""
        return {"logits": self.head(self.encoder(images))}

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Return the optimiser's parameter groups, trainable parameters only: the head and final
        norms at `lr`, block i (0 next to the input) at lr * decay^(depth - i), the embeddings
        at lr * decay^(depth + 1)."""
        layers = _layers(self.encoder)
        layers[-1] = [*layers[-1], *self.head.parameters()]
        top = len(layers) - 1
        groups = []
        for i, layer in enumerate(layers):
            params = [p for p in layer if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": lr * self.layer_decay ** (top - i)})
        return groups


@register("finetune", framework="pytorch", input_size=224)
def finetune(
    num_classes: int,
    pretrained: str | None = None,
    encoder: str = "uni",
    encoder_arch: dict[str, Any] | None = None,
    blocks: int = 0,
    layer_decay: float = 1.0,
) -> nn.Module:
    """Return `encoder` from its weights file `pretrained` (random without one) with a Linear head,
    training all its blocks (`blocks` 0) or the last `blocks`, with layer-wise lr decay."""
    model = create_encoder(encoder, pretrained, **(encoder_arch or {}))
    return FineTuned(model, num_classes, blocks=blocks, layer_decay=layer_decay)

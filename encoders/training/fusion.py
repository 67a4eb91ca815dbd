"""The fusion model: early, intermediate or late fusion of modality embeddings, with a
presence mask, modality dropout, and heads for category, sentiment and popularity plus
a normalised post embedding for similarity search."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from encoders.video import build_attention_pooling

STRATEGIES = ("early", "intermediate", "late")


class LexicalBag(nn.Module):
    """The lexical half of the text branch: learned token vectors summed with TF-IDF
    weights (``log1p(count) * idf``, L2-normalised per text). Sentence embeddings miss
    the exact words that decide many categories; this adds them back (wide-and-deep)."""

    def __init__(self, vocab_size: int, hidden: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, hidden, sparse=True)
        nn.init.normal_(self.table.weight, std=0.05)
        self.idf: torch.Tensor
        self.register_buffer("idf", torch.ones(vocab_size))

    def fit_idf(self, ids: torch.Tensor, counts: torch.Tensor) -> None:
        """Smoothed inverse document frequencies from training token bags."""
        present = torch.zeros_like(self.idf)
        present.index_add_(0, ids[counts > 0], torch.ones(int((counts > 0).sum())))
        n_docs = float(len(ids))
        self.idf.copy_(torch.log((1.0 + n_docs) / (1.0 + present)) + 1.0)

    def forward(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        weights = torch.log1p(counts) * self.idf[ids]
        weights = weights / weights.norm(dim=1, keepdim=True).clamp(min=1e-9)
        return (weights.unsqueeze(-1) * self.table(ids)).sum(dim=1)


class FusionModel(nn.Module):
    """Inputs: one ``(batch, dim_m)`` tensor per modality and a ``(batch, M)`` presence
    mask, plus, with ``lexical_vocab``, the texts' token bags (ids and counts) feeding a
    :class:`LexicalBag` into the text branch. ``forward`` returns (post_embedding,
    category_probs, sentiment_probs, popularity) — the exported serving signature;
    ``logits`` is used for training."""

    def __init__(
        self,
        dims: dict[str, int],
        n_categories: int,
        n_sentiments: int = 3,
        strategy: str = "intermediate",
        hidden: int = 256,
        embed_dim: int = 128,
        dropout: float = 0.1,
        lexical_vocab: int = 0,
        temporal: bool = False,
        multi_label: bool = False,
    ) -> None:
        super().__init__()
        self.multi_label = multi_label
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        self.modalities = list(dims)
        self.strategy = strategy
        m = len(dims)
        self.lexical = (
            LexicalBag(lexical_vocab, hidden) if lexical_vocab and "text" in dims else None
        )
        # the video temporal model (attention pooling over frame embeddings), trained
        # here end to end and exported as the bundle's video encoder
        self.temporal = (
            build_attention_pooling(dims["video"]) if temporal and "video" in dims else None
        )
        if strategy == "early":
            self.early_in = nn.Linear(sum(dims.values()) + m, hidden)
            self.trunk = nn.Sequential(
                nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.GELU()
            )
        else:
            self.project_in = nn.ModuleDict({k: nn.Linear(d, hidden) for k, d in dims.items()})
            self.project = nn.ModuleDict(
                {
                    k: nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(hidden))
                    for k in dims
                }
            )
            self.gate = nn.Linear(hidden, 1)
            self.trunk = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU())
        if strategy == "late":
            self.modality_heads = nn.ModuleDict({k: nn.Linear(hidden, n_categories) for k in dims})
            self.modality_weight = nn.Parameter(torch.zeros(m))
        self.category_head = nn.Linear(hidden, n_categories)
        self.sentiment_head = nn.Linear(hidden, n_sentiments)
        self.popularity_head = nn.Sequential(nn.Linear(hidden, 64), nn.GELU(), nn.Linear(64, 1))
        self.embedding_head = nn.Linear(hidden, embed_dim)
        # trains the embedding to cluster by category (normalised softmax on unit vectors)
        self.embedding_prototypes = nn.Linear(embed_dim, n_categories, bias=False)

    def _masked(self, parts: list[torch.Tensor], presence: torch.Tensor) -> list[torch.Tensor]:
        return [p * presence[:, i : i + 1] for i, p in enumerate(parts)]

    def _lexical(
        self, presence: torch.Tensor, tokens: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor | None:
        if self.lexical is None or tokens is None:
            return None
        t = self.modalities.index("text")
        return self.lexical(*tokens) * presence[:, t : t + 1]

    def logits(
        self,
        parts: list[torch.Tensor],
        presence: torch.Tensor,
        tokens: tuple[torch.Tensor, torch.Tensor] | None = None,
        video: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Raw head outputs and the fused hidden state. ``video`` (frame embeddings
        ``(batch, frames, dim)``, has-video ``(batch,)``) replaces the cached video
        embedding by the temporal model's, as the worker computes it."""
        if self.temporal is not None and video is not None:
            frames, has = video
            pooled = F.normalize(
                self.temporal(frames, (frames.abs().sum(-1) > 0).to(frames.dtype)), dim=-1
            )
            v = self.modalities.index("video")
            parts = list(parts)
            parts[v] = torch.where(has.unsqueeze(-1), pooled, parts[v])
        parts = self._masked(parts, presence)
        valid = presence > 0
        lexical = self._lexical(presence, tokens)
        if self.strategy == "early":
            first = self.early_in(torch.cat([*parts, presence], dim=1))
            h = self.trunk(first if lexical is None else first + lexical)
            category = self.category_head(h)
        else:
            inputs = [self.project_in[k](x) for k, x in zip(self.modalities, parts, strict=True)]
            if lexical is not None:
                t = self.modalities.index("text")
                inputs[t] = inputs[t] + lexical
            projected = torch.stack(
                [self.project[k](x) for k, x in zip(self.modalities, inputs, strict=True)], dim=1
            )
            if self.strategy == "intermediate":
                scores = self.gate(torch.tanh(projected)).squeeze(-1)
            else:
                scores = self.modality_weight.unsqueeze(0).expand(presence.shape[0], -1)
            scores = scores.masked_fill(~valid, -1e9)
            weights = torch.softmax(scores, dim=1) * valid.to(scores.dtype)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)
            h = self.trunk((weights.unsqueeze(-1) * projected).sum(dim=1))
            if self.strategy == "late":
                per_modality = torch.stack(
                    [
                        self.modality_heads[k](projected[:, i])
                        for i, k in enumerate(self.modalities)
                    ],
                    dim=1,
                )
                category = (weights.unsqueeze(-1) * per_modality).sum(dim=1)
            else:
                category = self.category_head(h)
        return {
            "hidden": h,
            "category": category,
            "sentiment": self.sentiment_head(h),
            "popularity": self.popularity_head(h).squeeze(-1),
            "embedding": (embedding := F.normalize(self.embedding_head(h), dim=-1)),
            "embedding_logits": F.linear(
                embedding, F.normalize(self.embedding_prototypes.weight, dim=-1)
            )
            / 0.1,
        }

    def forward(
        self, *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.lexical is not None:
            *rest, ids, counts = inputs
            inputs, tokens = tuple(rest), (ids, counts)
        *parts, presence = inputs
        out = self.logits(list(parts), presence, tokens)
        return (
            out["embedding"],
            torch.sigmoid(out["category"])
            if self.multi_label
            else torch.softmax(out["category"], dim=-1),
            torch.softmax(out["sentiment"], dim=-1),
            out["popularity"].unsqueeze(-1),
        )


def modality_dropout(
    presence: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Drop each present modality with probability ``p``, keeping at least one per row."""
    if p <= 0:
        return presence
    keep = (torch.rand(presence.shape, generator=generator) >= p).to(presence.dtype) * presence
    empty = keep.sum(dim=1) == 0
    if empty.any():
        # restore one random present modality in rows that lost all of them
        scores = torch.rand(presence.shape, generator=generator) * presence
        pick = F.one_hot(scores.argmax(dim=1), presence.shape[1]).to(presence.dtype)
        keep[empty] = pick[empty]
    return keep


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss (down-weights easy examples), optionally class-weighted."""
    log_p = F.log_softmax(logits, dim=-1)
    ce = F.nll_loss(log_p, target, weight=weight, reduction="none")
    p_t = log_p.gather(1, target.unsqueeze(1)).squeeze(1).exp()
    return ((1 - p_t) ** gamma * ce).mean()

"""Index-heavy set/graph operations: gather, scatter, masked_fill, topk, einsum."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class TopKSetPool(nn.Module):
    """Scores set elements, keeps the k best (respecting a padding mask) and pools them."""

    def __init__(self, dim=8, k=3):
        super().__init__()
        self.k = k
        self.score = nn.Linear(dim, 1)
        self.value = nn.Linear(dim, dim)

    def forward(self, x, mask):
        # x: (B, N, D), mask: (B, N) True where the element is real
        scores = self.score(x).squeeze(-1)
        scores = scores.masked_fill(~mask, -1e9)
        top_scores, top_idx = scores.topk(self.k, dim=1)
        idx = top_idx.unsqueeze(-1).expand(-1, -1, x.size(-1))
        picked = torch.gather(x, 1, idx)
        weights = F.softmax(top_scores, dim=-1)
        pooled = torch.einsum("bk,bkd->bd", weights, self.value(picked))
        return pooled, top_idx


class ScatterAggregate(nn.Module):
    """Message passing on an edge list: gather source nodes, scatter-add into targets."""

    def __init__(self, dim=8, num_nodes=5):
        super().__init__()
        self.num_nodes = num_nodes
        self.msg = nn.Linear(dim, dim)
        self.bilinear = nn.Parameter(torch.randn(dim, dim) * 0.1)

    def forward(self, h, src, dst):
        # h: (N, D) node features; src, dst: (E,) edge endpoints
        messages = self.msg(h[src])
        agg = torch.zeros(self.num_nodes, h.size(1), dtype=h.dtype)
        agg = agg.scatter_add(0, dst.unsqueeze(1).expand_as(messages), messages)
        deg = torch.zeros(self.num_nodes, dtype=h.dtype).scatter_add_(0, dst, torch.ones_like(dst, dtype=h.dtype))
        agg = agg / deg.clamp(min=1).unsqueeze(1)
        sim = torch.einsum("nd,de,me->nm", h, self.bilinear, h)
        one_hot = torch.zeros_like(sim).scatter(1, sim.argmax(dim=1, keepdim=True), 1.0)
        return agg + h, sim, one_hot

"""Self- and cross-attention layers on top of nn.MultiheadAttention."""
import torch
from torch import nn


class AttentionPool(nn.Module):
    """Self-attention with a padding mask, then a learned-query cross-attention pool."""

    def __init__(self, d_model=16, nhead=4, num_classes=3):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.query = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.pool = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x, key_padding_mask=None):
        attn_out, _ = self.self_attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        x = self.norm(x + attn_out)
        q = self.query.expand(x.size(0), -1, -1)
        pooled, weights = self.pool(q, x, x, key_padding_mask=key_padding_mask)
        return self.head(pooled.squeeze(1)), weights


class SeqFirstEncoder(nn.Module):
    """The (T, B, E) layout that nn.MultiheadAttention defaults to, with a causal mask."""

    def __init__(self, embed_dim=12, num_heads=3):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=0.1)
        self.ff = nn.Sequential(nn.Linear(embed_dim, 24), nn.ReLU(), nn.Linear(24, embed_dim))

    def forward(self, src):
        T = src.shape[0]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        out, _ = self.attn(src, src, src, attn_mask=causal)
        return src + self.ff(out)

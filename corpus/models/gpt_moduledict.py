"""A small GPT laid out the way karpathy's GPTs are: the trunk in an ``nn.ModuleDict(dict(...))``
read by attribute (``self.trunk.tok``), blocks in a ModuleList inside it, the output head's
weight given to the token embedding (``self.trunk.tok.weight = self.head.weight``), a
LayerNorm whose bias is an optional ``nn.Parameter``, and a parameter count printed by
``__init__``."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class OptionalBiasNorm(nn.Module):
    def __init__(self, dim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class MLPBlock(nn.Module):
    def __init__(self, dim, bias, p):
        super().__init__()
        self.norm = OptionalBiasNorm(dim, bias)
        self.up = nn.Linear(dim, 3 * dim, bias=bias)
        self.down = nn.Linear(3 * dim, dim, bias=bias)
        self.drop = nn.Dropout(p)

    def forward(self, x):
        return x + self.drop(self.down(F.gelu(self.up(self.norm(x)))))


class TinyLM(nn.Module):
    def __init__(self, vocab=23, context=12, dim=16, depth=2, bias=True, p=0.0):
        super().__init__()
        self.context = context
        self.trunk = nn.ModuleDict(dict(
            tok=nn.Embedding(vocab, dim),
            pos=nn.Embedding(context, dim),
            drop=nn.Dropout(p),
            blocks=nn.ModuleList([MLPBlock(dim, bias, p) for _ in range(depth)]),
            norm=OptionalBiasNorm(dim, bias),
        ))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.trunk.tok.weight = self.head.weight
        n = sum(p.numel() for p in self.parameters())
        print("parameters: %d (%.1f k)" % (n, n / 1e3))
        print("context %d, %d per position" % (context, self.count() // context))

    def count(self):
        return sum(p.numel() for p in self.trunk.parameters())

    def forward(self, idx):
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.trunk.drop(self.trunk.tok(idx) + self.trunk.pos(pos))
        for block in self.trunk.blocks:
            x = block(x)
        x = self.trunk.norm(x)
        return self.head(x) / math.sqrt(x.size(-1))

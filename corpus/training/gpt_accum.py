"""A tiny GPT language model trained the nanoGPT way: AdamW with decay / no-decay parameter
groups chosen by ndim and name, a warm-up + cosine learning rate written by hand into
``optimizer.param_groups``, gradient accumulation over micro-batches (loss / accum, one
optimizer step per outer iteration) and ``clip_grad_norm_`` on the accumulated gradients."""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, dim, heads, block_size):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.register_buffer("mask", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q = q.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        v = v.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab=16, dim=32, heads=2, layers=2, block_size=8):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, block_size, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, block_size) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok_emb(idx) + self.pos_emb[:, :t, :]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def get_lr(it, warmup, max_iters, max_lr, min_lr):
    if it < warmup:
        return max_lr * (it + 1) / warmup
    ratio = (it - warmup) / max(1, max_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()
    block_size, vocab = 8, 16
    rng = np.random.default_rng(0)
    # a noisy counting sequence: the next token is mostly the current one plus one
    data = np.cumsum(rng.integers(1, 3, size=4096)) % vocab

    def get_batch():
        starts = rng.integers(0, len(data) - block_size - 1, size=args.batch)
        x = np.stack([data[s:s + block_size] for s in starts]).astype(np.int64)
        y = np.stack([data[s + 1:s + block_size + 1] for s in starts]).astype(np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    model = GPT(vocab=vocab, block_size=block_size)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "pos_emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "pos_emb" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    model.train()
    for it in range(args.iters):
        lr = get_lr(it, 3, args.iters, args.lr, args.lr / 10)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(args.accum):
            xb, yb = get_batch()
            logits = model(xb)
            loss = F.cross_entropy(logits.view(-1, vocab), yb.view(-1)) / args.accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"iter {it} lr {lr:.5f} loss={loss.item() * args.accum:.7f}")


if __name__ == "__main__":
    main()

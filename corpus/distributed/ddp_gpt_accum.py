"""A tiny GPT trained with DDP and gradient accumulation, launched with torchrun:

    torchrun --nproc_per_node=8 ddp_gpt_accum.py --accum 2

Each optimizer step accumulates ``accum`` micro-batches; all but the last run under
``model.no_sync()`` so that DDP all-reduces the gradients once per step. AdamW, gradient
clipping on the accumulated gradients, a DistributedSampler over token windows, rank 0 logs
and saves the checkpoint."""
import argparse
import math
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, heads, block_size):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("mask", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q = q.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        v = v.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, dim, heads, block_size):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, block_size)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
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


def token_windows(n=512, block_size=8, vocab=16):
    """A noisy counting sequence cut into (input, next-token) windows."""
    rng = np.random.default_rng(0)
    data = np.cumsum(rng.integers(1, 3, size=n + block_size + 1)) % vocab
    x = np.stack([data[i:i + block_size] for i in range(n)]).astype(np.int64)
    y = np.stack([data[i + 1:i + block_size + 1] for i in range(n)]).astype(np.int64)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="per device and micro-batch")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--checkpoint", default="")
    args = parser.parse_args()
    dist.init_process_group(backend="gloo")
    rank = int(os.environ.get("RANK", 0))
    torch.manual_seed(0)
    dataset = token_windows()
    sampler = DistributedSampler(dataset, shuffle=True, seed=1)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    model = DDP(GPT())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        batches = iter(loader)
        for it in range(len(loader) // args.accum):
            for micro in range(args.accum):
                xb, yb = next(batches)
                if micro < args.accum - 1:
                    with model.no_sync():
                        logits = model(xb)
                        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), yb.view(-1)) / args.accum
                        loss.backward()
                else:
                    logits = model(xb)
                    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), yb.view(-1)) / args.accum
                    loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if rank == 0:
                print(f"epoch {epoch} iter {it} loss={loss.item() * args.accum:.6f}")
    if rank == 0 and args.checkpoint:
        torch.save(model.module.state_dict(), args.checkpoint)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

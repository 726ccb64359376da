"""A GRU encoder-decoder with dot-product attention learning to reverse digit sequences:
teacher forcing with a decoder loop over target positions inside ``forward``, attention
weights from ``torch.bmm`` + softmax over the encoder outputs, ``CrossEntropyLoss`` with
``ignore_index`` for padding, Adam with gradient clipping, greedy accuracy under ``no_grad``."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAD, BOS = 0, 1


class Seq2Seq(nn.Module):
    def __init__(self, vocab=12, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.encoder = nn.GRU(dim, dim, batch_first=True)
        self.decoder = nn.GRU(2 * dim, dim, batch_first=True)
        self.out = nn.Linear(2 * dim, vocab)

    def forward(self, src, tgt_in):
        enc, h = self.encoder(self.embed(src))
        context = torch.zeros(src.shape[0], 1, enc.shape[2])
        logits = []
        for t in range(tgt_in.shape[1]):
            step_in = torch.cat([self.embed(tgt_in[:, t:t + 1]), context], dim=2)
            dec, h = self.decoder(step_in, h)
            scores = torch.bmm(dec, enc.transpose(1, 2))
            weights = F.softmax(scores, dim=-1)
            context = torch.bmm(weights, enc)
            logits.append(self.out(torch.cat([dec, context], dim=2)))
        return torch.cat(logits, dim=1)


def make_batch(rng, batch, length):
    src = rng.integers(2, 12, size=(batch, length))
    tgt = src[:, ::-1]
    tgt_in = np.concatenate([np.full((batch, 1), BOS), tgt[:, :-1]], axis=1)
    return (torch.from_numpy(src.astype(np.int64)), torch.from_numpy(np.ascontiguousarray(tgt_in).astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(tgt).astype(np.int64)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--length", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(4)
    model = Seq2Seq()
    criterion = nn.CrossEntropyLoss(ignore_index=PAD)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for step in range(args.steps):
        src, tgt_in, tgt = make_batch(rng, 32, args.length)
        logits = model(src, tgt_in)
        loss = criterion(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        print(f"step {step} loss={loss.item():.7f}")
    model.eval()
    src, tgt_in, tgt = make_batch(rng, 64, args.length)
    with torch.no_grad():
        accuracy = (model(src, tgt_in).argmax(-1) == tgt).float().mean().item()
    print(f"teacher-forced token accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()

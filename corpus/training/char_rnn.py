"""A character-level GRU language model trained with truncated backpropagation through time:
the text is cut into ``bptt``-long windows, the hidden state is carried from one window to the
next and cut from the graph with ``hidden = hidden.detach()``, reset every epoch; Adam,
cross-entropy over the flattened time steps, gradient clipping."""
import argparse

import numpy as np
import torch
import torch.nn as nn


class CharRNN(nn.Module):
    def __init__(self, vocab, embed=16, hidden=48):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.embed(x), hidden)
        return self.head(out), hidden


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bptt", type=int, default=12)
    args = parser.parse_args()
    text = "the quick brown fox jumps over the lazy dog. " * 40
    chars = sorted(set(text))
    vocab = len(chars)
    index = {c: i for i, c in enumerate(chars)}
    encoded = np.array([index[c] for c in text], dtype=np.int64)
    batch = 4
    per_row = len(encoded) // batch
    data = torch.from_numpy(encoded[:batch * per_row].reshape(batch, per_row))
    model = CharRNN(vocab)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    windows = min(8, (per_row - 1) // args.bptt)
    for epoch in range(args.epochs):
        hidden = torch.zeros(1, batch, 48)
        for w in range(windows):
            x = data[:, w * args.bptt:(w + 1) * args.bptt]
            y = data[:, w * args.bptt + 1:(w + 1) * args.bptt + 1]
            hidden = hidden.detach()
            optimizer.zero_grad()
            logits, hidden = model(x, hidden)
            loss = criterion(logits.reshape(-1, vocab), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            print(f"epoch {epoch} window {w} loss={loss.item():.7f}")


if __name__ == "__main__":
    main()

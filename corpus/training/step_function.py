"""The tutorial shape of a training step: a module-level `train(input, target)` that zeroes
the gradients, runs the model, calls backward() and step() and returns the output and
`loss.item()`, with no loop of its own; the script's loop draws an example and calls it
(`output, loss = train(*example())`), accumulating the loss for a running average."""
import argparse

import numpy as np
import torch
import torch.nn as nn


class Classifier(nn.Module):
    def __init__(self, n_in=10, hidden=32, n_classes=4):
        super().__init__()
        self.hidden = nn.Linear(n_in, hidden)
        self.out = nn.Linear(hidden, n_classes)
        self.softmax = nn.LogSoftmax(dim=1)

    def forward(self, x):
        return self.softmax(self.out(torch.tanh(self.hidden(x))))


parser = argparse.ArgumentParser()
parser.add_argument("--iters", type=int, default=12)
parser.add_argument("--lr", type=float, default=0.02)
parser.add_argument("--print-every", type=int, default=1)
args = parser.parse_args()

torch.manual_seed(0)
data = np.random.default_rng(0)
centers = data.standard_normal((4, 10)).astype(np.float32)

model = Classifier()
criterion = nn.NLLLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)


def example(batch=8):
    labels = data.integers(0, 4, size=batch)
    inputs = centers[labels] + 0.3 * data.standard_normal((batch, 10)).astype(np.float32)
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def train(input, target):
    optimizer.zero_grad()
    output = model(input)
    loss = criterion(output, target)
    loss.backward()
    optimizer.step()
    return output, loss.item()


current_loss = 0.0
for it in range(1, args.iters + 1):
    output, loss = train(*example())
    current_loss += loss
    if it % args.print_every == 0:
        guess = output.argmax(dim=1)
        print(f"iter {it} loss={loss:.7f} first guess {guess[0].item()} average {current_loss / it:.4f}")

"""Regression with a validation split and host-side learning-rate control: either
``ReduceLROnPlateau`` on the validation loss (``scheduler.step(val_loss)``) or a
``SequentialLR`` (LinearLR warm-up, then ExponentialLR) stepped per epoch; SGD with momentum,
``nn.SmoothL1Loss``, an evaluation pass under ``no_grad`` every epoch."""
import argparse

import numpy as np
import torch
import torch.nn as nn
from torch.optim.lr_scheduler import ExponentialLR, LinearLR, ReduceLROnPlateau, SequentialLR
from torch.utils.data import DataLoader, TensorDataset


class Regressor(nn.Module):
    def __init__(self, n_in=6, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def evaluate(model, criterion, x, y):
    model.eval()
    with torch.no_grad():
        return criterion(model(x), y).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--scheduler", choices=["plateau", "sequential"], default="plateau")
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((160, 6)).astype(np.float32)
    y = (np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * rng.standard_normal(160)).astype(np.float32)
    train = DataLoader(TensorDataset(torch.from_numpy(x[:128]), torch.from_numpy(y[:128])), batch_size=32)
    x_val, y_val = torch.from_numpy(x[128:]), torch.from_numpy(y[128:])
    model = Regressor()
    criterion = nn.SmoothL1Loss(beta=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if args.scheduler == "plateau":
        scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=0, threshold=0.02)
    else:
        warmup = LinearLR(optimizer, start_factor=0.2, total_iters=2)
        decay = ExponentialLR(optimizer, gamma=0.7)
        scheduler = SequentialLR(optimizer, schedulers=[warmup, decay], milestones=[2])
    for epoch in range(args.epochs):
        model.train()
        for xb, yb in train:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            print(f"epoch {epoch} loss={loss.item():.7f}")
        val_loss = evaluate(model, criterion, x_val, y_val)
        if args.scheduler == "plateau":
            scheduler.step(val_loss)
        else:
            scheduler.step()
        print(f"epoch {epoch} val {val_loss:.5f} lr {scheduler.get_last_lr()[0]:.5f}")


if __name__ == "__main__":
    main()

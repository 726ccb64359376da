"""A CNN classifier trained the "AMP when there is a GPU" way: ``torch.autocast`` around the
forward pass and a ``GradScaler`` (``scaler.scale(loss).backward()``, ``unscale_`` before
``clip_grad_norm_``, ``scaler.step``, ``scaler.update``), both disabled on CPU; the best model
and optimizer are checkpointed with ``torch.save`` every epoch and restored with
``load_state_dict`` for a final evaluation."""
import argparse
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class SmallCNN(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def evaluate(model, loader):
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for xb, yb in loader:
            out = model(xb)
            total += F.cross_entropy(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
    return total / len(loader.dataset), correct / len(loader.dataset)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    use_amp = torch.cuda.is_available()
    device = "cuda" if use_amp else "cpu"
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, size=96)
    grid = np.arange(16)
    # noise plus a bright pixel whose position gives the class
    bright = (grid[None, :, None] == 4 * y[:, None, None]) & (grid[None, None, :] == 4 * y[:, None, None])
    x = (rng.standard_normal((96, 1, 16, 16)) * 0.5 + 3.0 * bright[:, None]).astype(np.float32)
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))
    loader = DataLoader(dataset, batch_size=32)
    model = SmallCNN().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.cuda.amp.GradScaler(enabled=use_amp)
    path = os.path.join(tempfile.mkdtemp(), "best.pt")
    best = float("inf")
    for epoch in range(args.epochs):
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad()
            with torch.autocast(device_type=device, dtype=torch.float16, enabled=use_amp):
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            scaler.step(optimizer)
            scaler.update()
            print(f"epoch {epoch} loss={loss.item():.7f}")
        val_loss, acc = evaluate(model, loader)
        print(f"epoch {epoch} eval {val_loss:.4f} acc {acc:.2f}")
        if val_loss < best:
            best = val_loss
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, path)
    checkpoint = torch.load(path)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    val_loss, acc = evaluate(model, loader)
    print(f"restored epoch {checkpoint['epoch']}: eval {val_loss:.4f} acc {acc:.2f}")


if __name__ == "__main__":
    main()

"""MLP regression written as a flat script: module-level loop, Adam + MSELoss, the loss
summed over an epoch with .item(), zero_grad after step, an evaluation pass under no_grad."""
import argparse

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class MLP(nn.Module):
    def __init__(self, n_in=8, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--lr", type=float, default=1e-2)
args = parser.parse_args()

torch.manual_seed(0)
rng = np.random.default_rng(0)
features = rng.standard_normal((128, 8)).astype(np.float32)
targets = (features @ rng.standard_normal(8) + np.sin(features[:, 0])).astype(np.float32)
dataset = TensorDataset(torch.from_numpy(features), torch.from_numpy(targets))
loader = DataLoader(dataset, batch_size=32)

model = MLP()
criterion = nn.MSELoss()
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)

for epoch in range(args.epochs):
    model.train()
    total = 0.0
    for xb, yb in loader:
        pred = model(xb)
        loss = criterion(pred, yb)
        total += loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"step loss={loss.item():.7f}")
    print(f"epoch {epoch} mean loss {total / len(loader):.5f}")

model.eval()
with torch.no_grad():
    err = 0.0
    for xb, yb in loader:
        err += criterion(model(xb), yb).item()
print(f"eval mse {err / len(loader):.5f}")

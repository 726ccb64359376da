"""An MLP classifier with dropout (AdamW, gradient clipping, a LinearLR warm-up stepped
per epoch, BCEWithLogits with pos_weight for a binary head and CrossEntropy for classes)."""
import argparse

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class Classifier(nn.Module):
    def __init__(self, n_in=16, hidden=32, n_classes=4, p=0.3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, hidden),
                                  nn.GELU(), nn.Dropout(p))
        self.classes = nn.Linear(hidden, n_classes)
        self.flag = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.body(x)
        return self.classes(h), self.flag(h).squeeze(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dropout", type=float, default=0.3)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((96, 16)).astype(np.float32)
    y = (x[:, :4].argmax(1)).astype(np.int64)
    f = (x[:, 5] > 0.5).astype(np.float32)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(f)), batch_size=32)
    model = Classifier(p=args.dropout)
    ce = nn.CrossEntropyLoss()
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
    for epoch in range(args.epochs):
        model.train()
        for xb, yb, fb in loader:
            optimizer.zero_grad()
            logits, flag = model(xb)
            loss = ce(logits, yb) + 0.5 * bce(flag, fb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            print(f"loss={loss.item():.7f}")
        scheduler.step()


if __name__ == "__main__":
    main()

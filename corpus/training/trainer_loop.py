"""A Trainer class (plain Python, not an nn.Module) that builds its own optimizer from
`self.model.parameters()` and trains in a method whose for loop holds zero_grad / forward /
backward / clip_grad_norm_ / step on `self.model` and `self.optimizer`; the batch loss is
logged after the step, and accuracy is measured in another method under no_grad."""
import argparse

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class ConvNet(nn.Module):
    def __init__(self, n_classes=3):
        super().__init__()
        self.conv = nn.Conv1d(2, 6, kernel_size=3, padding=1)
        self.head = nn.Linear(6 * 8, n_classes)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.head(h.flatten(1))


class Trainer:
    def __init__(self, model, lr, clip=1.0):
        self.model = model
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=1e-4)
        self.loss_fn = nn.CrossEntropyLoss()
        self.clip = clip
        self.steps = 0

    def fit(self, loader, epoch):
        self.model.train()
        for xb, yb in loader:
            self.optimizer.zero_grad()
            logits = self.model(xb)
            loss = self.loss_fn(logits, yb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.optimizer.step()
            self.steps += 1
            print(f"epoch {epoch} step {self.steps} loss={loss.item():.7f}")

    def accuracy(self, loader):
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in loader:
                correct += (self.model(xb).argmax(dim=1) == yb).sum().item()
        return correct / len(loader.dataset)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    x = (rng.standard_normal((60, 2, 8)) + y[:, None, None]).astype(np.float32)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=20)
    trainer = Trainer(ConvNet(), args.lr)
    for epoch in range(args.epochs):
        trainer.fit(loader, epoch)
        print(f"epoch {epoch} accuracy {trainer.accuracy(loader):.3f}")


if __name__ == "__main__":
    main()

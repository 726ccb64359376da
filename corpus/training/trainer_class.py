"""A Trainer class (a plain Python class, not an nn.Module) holding the model, the optimizer
and the loss module as attributes, in the layout of the DDP tutorial series: `_run_batch`
makes one optimizer step and has no loop of its own, `_run_epoch` loops over the data loader
and calls it; model and optimizer are built by a function and passed in; evaluation under
no_grad and a checkpoint of `self.model.state_dict()` are methods too."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class Regressor(nn.Module):
    def __init__(self, n_in=6, hidden=24):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class Trainer:
    def __init__(self, model, train_data, optimizer, save_every, path):
        self.model = model
        self.train_data = train_data
        self.optimizer = optimizer
        self.criterion = nn.SmoothL1Loss(beta=0.5)
        self.save_every = save_every
        self.path = path

    def _run_batch(self, source, targets):
        self.optimizer.zero_grad()
        output = self.model(source)
        loss = self.criterion(output, targets)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def _run_epoch(self, epoch):
        self.model.train()
        total = 0.0
        for source, targets in self.train_data:
            batch_loss = self._run_batch(source, targets)
            total += batch_loss
            print(f"epoch {epoch} loss={batch_loss:.7f}")
        return total / len(self.train_data)

    def evaluate(self):
        self.model.eval()
        err = 0.0
        with torch.no_grad():
            for source, targets in self.train_data:
                err += F.mse_loss(self.model(source), targets).item()
        return err / len(self.train_data)

    def _save_checkpoint(self, epoch):
        torch.save(self.model.state_dict(), self.path)
        print(f"epoch {epoch}: checkpoint saved")

    def train(self, max_epochs):
        for epoch in range(max_epochs):
            mean = self._run_epoch(epoch)
            print(f"epoch {epoch} mean {mean:.5f} eval mse {self.evaluate():.5f}")
            if self.path and epoch % self.save_every == 0:
                self._save_checkpoint(epoch)


def load_train_objs(lr):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    y = np.tanh(x @ rng.standard_normal((6, 3))).astype(np.float32)
    train_set = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return train_set, model, optimizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--save", default="")
    args = parser.parse_args()
    torch.manual_seed(0)
    dataset, model, optimizer = load_train_objs(args.lr)
    train_data = DataLoader(dataset, batch_size=24)
    trainer = Trainer(model, train_data, optimizer, 1, args.save)
    trainer.train(args.epochs)


if __name__ == "__main__":
    main()

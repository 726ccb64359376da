"""Sequential / ModuleList / ModuleDict used together, with dict outputs."""
import torch
import torch.nn as nn


class MultiTaskNet(nn.Module):
    def __init__(self, in_dim=10, hidden=16, depth=3, tasks=("cls", "reg")):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.Sequential(
                nn.LayerNorm(hidden),
                nn.Linear(hidden, hidden),
                nn.SiLU(),
            ))
        self.heads = nn.ModuleDict({
            "cls": nn.Linear(hidden, 4),
            "reg": nn.Sequential(nn.Linear(hidden, 8), nn.Tanh(), nn.Linear(8, 1)),
        })
        self.tasks = list(tasks)

    def forward(self, x):
        h = self.stem(x)
        for i, layer in enumerate(self.layers):
            h = h + layer(h) if i > 0 else layer(h)
        return {task: self.heads[task](h) for task in self.tasks}


class GatedStack(nn.Module):
    """Parallel ModuleLists zipped together, indexed Sequential access, ModuleDict items()."""

    def __init__(self, dim=8, n=2):
        super().__init__()
        self.values = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n)])
        self.gates = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n)])
        self.acts = nn.ModuleDict({"relu": nn.ReLU(), "sigmoid": nn.Sigmoid()})
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.ELU(), nn.Linear(dim, 2))

    def forward(self, x):
        for value, gate in zip(self.values, self.gates):
            x = x + self.acts["relu"](value(x)) * self.acts["sigmoid"](gate(x))
        first = self.out[0](x)
        return self.out(x), first

"""A network whose blocks are built from a class given to the constructor (``unit(cin, cout)``)
and a recursive tree whose sub-trees are registered with ``__setattr__`` and found again by
name in ``forward`` (the shape of DLA-style CIFAR models)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBN(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Join(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, parts):
        return F.relu(self.bn(self.proj(torch.cat(parts, 1))))


class Branches(nn.Module):
    def __init__(self, unit, cin, cout, depth=1, stride=1):
        super().__init__()
        self.depth = depth
        if depth == 1:
            self.first = unit(cin, cout, stride=stride)
        else:
            for d in range(1, depth):
                self.__setattr__("sub_%d" % d, Branches(unit, cin if d == 1 else cout, cout, depth=d,
                                                        stride=stride if d == 1 else 1))
            self.first = unit(cout, cout)
        self.second = unit(cout, cout)
        self.join = Join((depth + 1) * cout, cout)

    def forward(self, x):
        parts = []
        for d in range(1, self.depth):
            sub = getattr(self, "sub_%d" % d)
            x = sub(x)
            parts.append(x)
        x = self.first(x)
        parts.append(x)
        x = self.second(x)
        parts.append(x)
        return self.join(parts)


class TreeNet(nn.Module):
    def __init__(self, unit=ConvBN, width=4, depth=3, num_classes=5):
        super().__init__()
        self.stem = unit(3, width)
        self.tree = Branches(unit, width, 2 * width, depth=depth, stride=2)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.tree(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

"""Custom parameter initialisation idioms: nn.Parameter, nn.init.*, self.modules(), self.apply."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ScaledConvNet(nn.Module):
    def __init__(self, in_ch=3, width=6, num_classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.gamma = nn.Parameter(torch.ones(1, width, 1, 1))
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.fc = nn.Linear(width, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = x + self.gamma * self.conv2(x)
        x = x.mean(dim=(2, 3))
        return self.fc(x) / self.temperature


class LowRankLinear(nn.Module):
    """W = U @ V with a learned scale; everything initialised via self.apply."""

    def __init__(self, in_features=12, out_features=10, rank=3):
        super().__init__()
        self.U = nn.Parameter(torch.empty(out_features, rank))
        self.V = nn.Parameter(torch.empty(rank, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.norm = nn.LayerNorm(out_features)
        self.reset_parameters()
        self.apply(self._init_weights)

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.U, a=math.sqrt(5))
        nn.init.orthogonal_(self.V)
        with torch.no_grad():
            self.bias.uniform_(-0.1, 0.1)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        w = self.U @ self.V
        return self.norm(F.linear(x, w, self.bias))

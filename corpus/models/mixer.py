"""MLP-Mixer blocks with LayerNorm/GELU, and a GroupNorm conv variant."""
import torch
import torch.nn as nn


class MlpBlock(nn.Module):
    def __init__(self, dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.net(x)


class MixerBlock(nn.Module):
    def __init__(self, num_tokens=16, dim=8, token_hidden=12, channel_hidden=16, dropout=0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mix = MlpBlock(num_tokens, token_hidden, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mix = MlpBlock(dim, channel_hidden, dropout)

    def forward(self, x):
        # x: (B, tokens, channels)
        y = self.norm1(x).transpose(1, 2)
        x = x + self.token_mix(y).transpose(1, 2)
        x = x + self.channel_mix(self.norm2(x))
        return x


class MLPMixer(nn.Module):
    def __init__(self, image_size=8, patch_size=2, in_channels=3, dim=8, depth=2, num_classes=4):
        super().__init__()
        num_tokens = (image_size // patch_size) ** 2
        self.stem = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.blocks = nn.Sequential(*[MixerBlock(num_tokens, dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.blocks(x)
        x = self.norm(x).mean(dim=1)
        return self.head(x)


class ConvGNBlock(nn.Module):
    """Conv -> GroupNorm -> GELU (tanh approximation) with a residual, as in diffusion UNets."""

    def __init__(self, channels=8, groups=4):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(groups, channels)
        self.act = nn.GELU(approximate="tanh")
        self.norm_out = nn.GroupNorm(1, channels, eps=1e-6)

    def forward(self, x):
        return self.norm_out(x + self.act(self.norm(self.conv(x))))

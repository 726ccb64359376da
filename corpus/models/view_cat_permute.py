"""Two-stream network: reshapes, concatenation, permutes and contiguous()."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class TwoStreamNet(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.image_conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.seq_proj = nn.Linear(5, 4)
        self.fuse = nn.Linear(4 * 4 * 4 + 4 * 6, 16)
        self.out = nn.Linear(16, num_classes)

    def forward(self, image, seq):
        # image: (B, 3, 4, 4); seq: (B, 5, 6) channels-first sequence
        a = F.relu(self.image_conv(image))
        a = a.permute(0, 2, 3, 1).contiguous()       # NHWC
        a = a.view(a.size(0), -1)
        s = self.seq_proj(seq.permute(0, 2, 1))      # (B, 6, 4)
        s = s.transpose(1, 2).reshape(s.shape[0], -1)
        h = torch.cat((a, s), 1)
        h = F.relu(self.fuse(h))
        logits = self.out(h)
        return logits, h.unsqueeze(1).repeat(1, 2, 1)


class Shuffle(nn.Module):
    """Channel shuffle (ShuffleNet) and pixel shuffle done by hand with view/permute."""

    def __init__(self, groups=2, upscale=2):
        super().__init__()
        self.groups = groups
        self.upscale = upscale
        self.conv = nn.Conv2d(8, 8, 1, groups=groups)

    def forward(self, x):
        b, c, h, w = x.size()
        x = self.conv(x)
        x = x.view(b, self.groups, c // self.groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        x = x.view(b, -1, h, w)
        r = self.upscale
        y = x.view(b, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)
        y = y.contiguous().view(b, c // (r * r), h * r, w * r)
        return torch.cat([y, F.pixel_shuffle(x, r)], dim=1), torch.stack([x, 2 * x], dim=0).mean(0)

"""A GAN on a 2-D ring of Gaussians: generator and discriminator MLPs, two Adam optimizers
(betas=(0.5, 0.999)), BCEWithLogits, the discriminator step on ``fake.detach()`` and the
generator step through the freshly updated discriminator, latent noise from ``torch.randn``
in a seeded loop, samples drawn under ``no_grad`` at the end."""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn


class Generator(nn.Module):
    def __init__(self, latent=4, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 2))

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def ring(rng, n, modes=6):
    angles = 2 * math.pi * rng.integers(0, modes, size=n) / modes
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 2.0
    return (points + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--latent", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    generator = Generator(latent=args.latent)
    discriminator = Discriminator()
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    criterion = nn.BCEWithLogitsLoss()
    ones = torch.ones(args.batch)
    zeros = torch.zeros(args.batch)
    for step in range(args.steps):
        real = torch.from_numpy(ring(rng, args.batch))
        z = torch.randn(args.batch, args.latent)
        fake = generator(z)
        opt_d.zero_grad()
        d_loss = criterion(discriminator(real), ones) + criterion(discriminator(fake.detach()), zeros)
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad()
        g_loss = criterion(discriminator(fake), ones)
        g_loss.backward()
        opt_g.step()
        print(f"step {step} d_loss={d_loss.item():.7f} g_loss={g_loss.item():.7f}")
    with torch.no_grad():
        samples = generator(torch.randn(256, args.latent))
    radius = samples.norm(dim=1).mean().item()
    print(f"mean sample radius {radius:.3f} (data: 2.0)")


if __name__ == "__main__":
    main()

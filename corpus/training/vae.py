"""A variational autoencoder on synthetic low-rank data: the reparameterisation trick with
``torch.randn_like`` inside ``forward``, a seeded script (``torch.manual_seed``) that shuffles
with ``torch.randperm`` every epoch and corrupts its inputs with ``torch.randn_like`` noise
(a denoising VAE), a summed reconstruction + KL loss in a helper function, Adam."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class VAE(nn.Module):
    def __init__(self, n_in=24, hidden=48, latent=4):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n_in))

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn_like(std)
        return self.dec(z), mu, logvar


def vae_loss(recon, x, mu, logvar):
    rec = F.mse_loss(recon, x, reduction="sum") / x.shape[0]
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / x.shape[0]
    return rec + kld


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.05)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((128, 4)).astype(np.float32)
    data = torch.from_numpy(np.tanh(codes @ rng.standard_normal((4, 24)).astype(np.float32)))
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    n = data.shape[0]
    for epoch in range(args.epochs):
        perm = torch.randperm(n)
        for i in range(0, n, args.batch):
            xb = data[perm[i:i + args.batch]]
            noisy = xb + args.noise * torch.randn_like(xb)
            optimizer.zero_grad()
            recon, mu, logvar = model(noisy)
            loss = vae_loss(recon, xb, mu, logvar)
            loss.backward()
            optimizer.step()
            print(f"epoch {epoch} loss={loss.item():.7f}")


if __name__ == "__main__":
    main()

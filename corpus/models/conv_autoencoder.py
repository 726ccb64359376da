"""A convolutional autoencoder: strided convs down, transposed convs up."""
import torch.nn as nn


class ConvAutoencoder(nn.Module):
    def __init__(self, in_channels=1, hidden=4, latent=8):
        super(ConvAutoencoder, self).__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, stride=2, padding=1),   # 12 -> 6
            nn.ReLU(True),
            nn.Conv2d(hidden, latent, 3, stride=2, padding=1),        # 6 -> 3
            nn.ReLU(True),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(latent, hidden, 3, stride=2, padding=1, output_padding=1),  # 3 -> 6
            nn.ReLU(True),
            nn.ConvTranspose2d(hidden, in_channels, 3, stride=2, padding=1, output_padding=1),  # 6 -> 12
            nn.Sigmoid(),
        )

    def forward(self, x):
        z = self.encoder(x)
        x_hat = self.decoder(z)
        return x_hat, z


class DilatedUpsampler(nn.Module):
    """ConvTranspose2d with groups, dilation and non-square kernels."""

    def __init__(self, channels=4):
        super().__init__()
        self.up = nn.ConvTranspose2d(channels, channels, kernel_size=(3, 2), stride=(2, 1),
                                     padding=(1, 0), dilation=(1, 2), groups=2)
        self.proj = nn.ConvTranspose2d(channels, 2, kernel_size=1, bias=False)

    def forward(self, x):
        return self.proj(self.up(x))

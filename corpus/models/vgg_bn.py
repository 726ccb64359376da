"""A miniature VGG with batch norm, built from a configuration list."""
import torch
import torch.nn as nn

cfg = {
    "tiny": [8, "M", 16, 16, "M", 32, "M"],
    "small": [16, 16, "M", 32, 32, "M", 64, 64, "M"],
}


class VGG(nn.Module):
    def __init__(self, vgg_name="tiny", num_classes=10, in_channels=3):
        super(VGG, self).__init__()
        self.features = self._make_layers(cfg[vgg_name], in_channels)
        self.classifier = nn.Linear(cfg[vgg_name][-2], num_classes)

    def forward(self, x):
        out = self.features(x)
        out = out.view(out.size(0), -1)
        out = self.classifier(out)
        return out

    def _make_layers(self, cfg, in_channels):
        layers = []
        for x in cfg:
            if x == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                layers += [nn.Conv2d(in_channels, x, kernel_size=3, padding=1),
                           nn.BatchNorm2d(x),
                           nn.ReLU(inplace=True)]
                in_channels = x
        layers += [nn.AdaptiveAvgPool2d((1, 1))]
        return nn.Sequential(*layers)

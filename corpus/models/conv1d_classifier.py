"""1-D convolutional classifiers: a Kim-style text CNN and a raw-waveform audio net."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class TextCNN(nn.Module):
    def __init__(self, vocab_size=50, embed_dim=8, num_filters=6, kernel_sizes=(2, 3, 4),
                 num_classes=3, dropout=0.5, padding_idx=0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        self.convs = nn.ModuleList([nn.Conv1d(embed_dim, num_filters, k) for k in kernel_sizes])
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_filters * len(kernel_sizes), num_classes)

    def forward(self, tokens):
        x = self.embedding(tokens)          # (B, T, E)
        x = x.permute(0, 2, 1)              # (B, E, T)
        pooled = [F.relu(conv(x)).max(dim=2)[0] for conv in self.convs]
        x = self.dropout(torch.cat(pooled, dim=1))
        return self.fc(x)


class AudioNet(nn.Module):
    def __init__(self, n_input=1, n_output=5, stride=4, n_channel=8):
        super().__init__()
        self.conv1 = nn.Conv1d(n_input, n_channel, kernel_size=16, stride=stride)
        self.bn1 = nn.BatchNorm1d(n_channel)
        self.pool1 = nn.MaxPool1d(4)
        self.conv2 = nn.Conv1d(n_channel, 2 * n_channel, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm1d(2 * n_channel)
        self.pool2 = nn.AvgPool1d(2)
        self.fc1 = nn.Linear(2 * n_channel, n_output)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(self.bn1(x))
        x = self.pool1(x)
        x = self.conv2(x)
        x = F.relu(self.bn2(x))
        x = self.pool2(x)
        x = F.adaptive_avg_pool1d(x, 1)
        x = x.permute(0, 2, 1)
        x = self.fc1(x)
        return F.log_softmax(x, dim=2)

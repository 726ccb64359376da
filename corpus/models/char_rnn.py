"""Character-level language models with recurrent hidden state."""
import torch
import torch.nn as nn


class CharLSTM(nn.Module):
    def __init__(self, vocab_size=40, embed_dim=12, hidden_size=16, num_layers=2, dropout=0.1):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers=num_layers,
                            batch_first=True, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, x, hidden=None):
        emb = self.embed(x)
        output, hidden = self.lstm(emb, hidden)
        output = self.drop(output)
        logits = self.decoder(output)
        return logits, hidden

    def init_hidden(self, batch_size):
        weight = next(self.parameters())
        return (weight.new_zeros(self.num_layers, batch_size, self.hidden_size),
                weight.new_zeros(self.num_layers, batch_size, self.hidden_size))


class CharGRU(nn.Module):
    def __init__(self, vocab_size=40, hidden_size=16):
        super(CharGRU, self).__init__()
        self.encoder = nn.Embedding(vocab_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, input, hidden):
        # input: (seq_len, batch) as in the classic char-rnn tutorial
        output, hidden = self.gru(self.encoder(input), hidden)
        output = self.decoder(output.reshape(-1, output.size(2)))
        return output, hidden

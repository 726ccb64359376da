"""A regression MLP trained with DistributedDataParallel, launched the torchrun way:

    torchrun --nproc_per_node=4 ddp_mlp.py --epochs 2

Rank and world size come from torchrun's environment, each rank reads its shard of the data
through a DistributedSampler (reshuffled every epoch with set_epoch), the epoch loss is
averaged over ranks with all_reduce and only rank 0 prints and saves the checkpoint."""
import argparse
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


class MLP(nn.Module):
    def __init__(self, d_in=8, hidden=32, d_out=1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, d_out)

    def forward(self, x):
        x = torch.tanh(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.out(x)


def setup():
    dist.init_process_group(backend="gloo")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    return rank, local_rank, world_size


def make_dataset(n=256, d_in=8):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    w = rng.standard_normal((d_in, 1)).astype(np.float32)
    y = (np.sin(x) @ w + 0.1 * rng.standard_normal((n, 1))).astype(np.float32)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="per device")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--checkpoint", default="")
    args = parser.parse_args()
    rank, local_rank, world_size = setup()
    torch.manual_seed(0)
    dataset = make_dataset()
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    model = MLP()
    model = DDP(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    criterion = nn.MSELoss()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            pred = model(xb)
            loss = criterion(pred, yb)
            loss.backward()
            optimizer.step()
            total += loss.item()
        epoch_loss = torch.tensor(total / len(loader))
        dist.all_reduce(epoch_loss, op=dist.ReduceOp.SUM)
        epoch_loss = epoch_loss / world_size
        if rank == 0:
            print(f"epoch {epoch} loss={epoch_loss.item():.6f}")
    if rank == 0 and args.checkpoint:
        torch.save(model.module.state_dict(), args.checkpoint)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

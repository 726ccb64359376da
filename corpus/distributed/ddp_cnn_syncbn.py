"""A small CNN with BatchNorm trained with DDP, launched with mp.spawn (one process per GPU):

    python ddp_cnn_syncbn.py --world-size 4

BatchNorm layers are turned into SyncBatchNorm (statistics over the global batch), SGD with
momentum, the sampler's shard per rank, correct predictions summed over ranks with
all_reduce, evaluation in eval mode (running statistics), rank 0 prints and checkpoints."""
import argparse
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


class ConvNet(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = x.mean(dim=(2, 3))
        return self.fc(x)


def make_dataset(n=128):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=n)
    images = rng.standard_normal((n, 3, 8, 8)).astype(np.float32) + labels[:, None, None, None].astype(np.float32) / 4
    return TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))


def run(rank, world_size, args):
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = "29500"
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    dataset = make_dataset()
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    model = ConvNet()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp_model = DDP(model, device_ids=None)
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=args.lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        ddp_model.train()
        correct = 0
        for images, labels in loader:
            optimizer.zero_grad()
            logits = ddp_model(images)
            loss = criterion(logits, labels)
            loss.backward()
            optimizer.step()
            correct += (logits.argmax(dim=1) == labels).sum().item()
            if rank == 0:
                print(f"epoch {epoch} loss={loss.item():.6f}")
        stats = torch.tensor([correct, len(sampler)], dtype=torch.float32)
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        if rank == 0:
            print(f"epoch {epoch} train accuracy {stats[0].item() / stats[1].item():.3f}")
    ddp_model.eval()
    with torch.no_grad():
        images, labels = dataset[:32]
        accuracy = (ddp_model(images).argmax(dim=1) == labels).float().mean()
    if rank == 0:
        print(f"eval accuracy {accuracy.item():.3f}")
        if args.checkpoint:
            torch.save(ddp_model.module.state_dict(), args.checkpoint)
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4, help="per device")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--checkpoint", default="")
    args = parser.parse_args()
    mp.spawn(run, args=(args.world_size, args), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()

"""REINFORCE on a contextual bandit: a policy network maps a context to action logits,
actions are sampled from ``torch.distributions.Categorical`` under ``no_grad`` (the rollout),
rewards come from a NumPy environment, and the policy-gradient loss re-evaluates the log
probabilities of the taken actions with a mean-reward baseline and an entropy bonus."""
import argparse

import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical


class Policy(nn.Module):
    def __init__(self, n_in=5, n_actions=4, hidden=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_actions))

    def forward(self, x):
        return self.net(x)


def rewards_for(contexts, actions, weights):
    """Reward 1 when the action is the context's best arm, else a small noisy penalty."""
    best = (contexts @ weights).argmax(1)
    return np.where(actions == best, 1.0, -0.1).astype(np.float32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((5, 4)).astype(np.float32)
    policy = Policy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    for step in range(args.steps):
        contexts = torch.from_numpy(rng.standard_normal((args.batch, 5)).astype(np.float32))
        with torch.no_grad():
            actions = Categorical(logits=policy(contexts)).sample()
        rewards = torch.from_numpy(rewards_for(contexts.numpy(), actions.numpy(), weights))
        advantages = rewards - rewards.mean()
        dist = Categorical(logits=policy(contexts))
        loss = -(dist.log_prob(actions) * advantages).mean() - 0.01 * dist.entropy().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} regret={1.0 - rewards.mean().item():.4f} loss={loss.item():.7f}")


if __name__ == "__main__":
    main()

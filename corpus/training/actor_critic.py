"""Advantage actor-critic on a small synthetic task: separate actor and critic networks, each
with its own optimizer, trained by ONE summed loss (policy-gradient term + value regression)
with one backward() and two step() calls. Each update collects a horizon of states, samples
actions from a Categorical without gradients (in a helper function), then recomputes the
log-probabilities and values from the stored states, as PPO-style code does."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical


class Actor(nn.Module):
    def __init__(self, n_obs=4, n_actions=3, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(n_obs, hidden)
        self.fc2 = nn.Linear(hidden, n_actions)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class Critic(nn.Module):
    def __init__(self, n_obs=4, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(n_obs, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x))).squeeze(-1)


def environment(rng, horizon):
    """A horizon of random states and, for each, the rewarded action: how many of the first
    two coordinates are positive (a contextual bandit unrolled over a horizon)."""
    states = rng.standard_normal((horizon, 4)).astype(np.float32)
    best = (states[:, 0] > 0).astype(np.int64) + (states[:, 1] > 0).astype(np.int64)
    return torch.from_numpy(states), best


def sample_actions(logits):
    """One action per state, drawn from the policy's categorical distribution."""
    return Categorical(logits=logits).sample()


def discounted(rewards, gamma=0.9):
    returns = np.zeros_like(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--horizon", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(7)
    actor = Actor()
    critic = Critic()
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-2)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for update in range(args.updates):
        states, best = environment(rng, args.horizon)
        with torch.no_grad():
            actions = sample_actions(actor(states))
        rewards = (actions.numpy() == best).astype(np.float32)
        returns = torch.from_numpy(discounted(rewards))
        values = critic(states)
        advantage = returns - values.detach()
        log_probs = F.log_softmax(actor(states), dim=-1).gather(1, actions.unsqueeze(1)).squeeze(1)
        actor_loss = -(log_probs * advantage).mean()
        critic_loss = F.mse_loss(values, returns)
        loss = actor_loss + 0.5 * critic_loss
        actor_opt.zero_grad()
        critic_opt.zero_grad()
        loss.backward()
        actor_opt.step()
        critic_opt.step()
        print(f"update {update} reward={rewards.mean():.4f} loss={loss.item():.7f}")


if __name__ == "__main__":
    main()

"""An actor-critic network for discrete actions: shared trunk, policy and value heads."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ActorCritic(nn.Module):
    def __init__(self, obs_dim=8, n_actions=4, hidden=32):
        super(ActorCritic, self).__init__()
        self.shared = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
        )
        self.actor = nn.Linear(hidden, n_actions)
        self.critic = nn.Linear(hidden, 1)

    def forward(self, obs):
        features = self.shared(obs)
        logits = self.actor(features)
        log_probs = F.log_softmax(logits, dim=-1)
        value = self.critic(features).squeeze(-1)
        return log_probs, value

    def evaluate(self, obs, actions):
        log_probs, value = self.forward(obs)
        action_log_probs = log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return action_log_probs, value, entropy


class GaussianActor(nn.Module):
    """Continuous actions: mean from a network, state-independent log std parameter."""

    def __init__(self, obs_dim=6, act_dim=2, hidden=16):
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, act_dim))
        self.log_std = nn.Parameter(-0.5 * torch.ones(act_dim))
        self.v = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, obs, act):
        mu = self.mu(obs)
        std = torch.exp(self.log_std)
        logp = (-((act - mu) ** 2) / (2 * std ** 2) - self.log_std - 0.5 * torch.log(torch.tensor(2 * torch.pi))).sum(-1)
        return mu, logp, torch.squeeze(self.v(obs), -1)

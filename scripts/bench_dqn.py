"""Python side of scripts/bench_dqn.sh: the DQN's default network and learner update in PyTorch,
the same work as agent-svc/examples/bench_dqn.rs does through tch (same libtorch 2.13.0, same
thread count). Prints one JSON object.

Network (`--net lstm`, the default): Embedding(64, padding_idx=0) -> BiLSTM 64 -> BiLSTM 64 -> BiLSTM 32 (its two final
hidden states) -> Dense 64 ReLU -> Dense 32 ReLU -> Q over n_actions; PyTorch's default inits.
`--net mlp`: the embeddings averaged over the non-padding tokens instead of the LSTMs.
Update: online forward on the states, online and target forwards on the next states (Double
DQN target, bootstrapping masked by `terminated`), Huber loss, backward, gradient-norm clipping
(10), Adam (lr 1e-3), a hard target copy every 200 updates, `loss.item()`.
`--active-vocab N` draws the token ids from the first N words (torch's Adam still updates the
whole table, as it does in a PyTorch agent).
Inference: the online forward of one batch under `torch.no_grad()`, timed one call at a time.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn


class QNet(nn.Module):
    def __init__(self, vocab_rows, n_actions, net="lstm", emb=64, lstm_units=(64, 64, 32), hidden=(64, 32)):
        super().__init__()
        self.net = net
        self.embedding = nn.Embedding(vocab_rows, emb, padding_idx=0)
        self.lstms = nn.ModuleList()
        width = emb
        for units in lstm_units if net == "lstm" else ():
            self.lstms.append(nn.LSTM(width, units, batch_first=True, bidirectional=True))
            width = 2 * units
        self.hidden = nn.ModuleList()
        for units in hidden:
            self.hidden.append(nn.Linear(width, units))
            width = units
        self.q = nn.Linear(width, n_actions)

    def forward(self, ids):
        x = self.embedding(ids)
        if self.net == "mlp":
            # Mean of the embeddings of the non-padding tokens.
            mask = (ids != 0).float().unsqueeze(-1)
            x = (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        last = len(self.lstms) - 1
        for i, lstm in enumerate(self.lstms):
            out, (h, _c) = lstm(x)
            # The last layer returns its final hidden states, forward then backward.
            x = out if i < last else h.transpose(0, 1).reshape(ids.shape[0], -1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.q(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--n-actions", type=int, default=1289)
    p.add_argument("--vocab", type=int, default=20_000)
    p.add_argument("--net", choices=["lstm", "mlp"], default="lstm")
    p.add_argument("--active-vocab", type=int, default=None, help="token ids from the first N words only")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    gamma, target_every = 0.9, 200

    online = QNet(a.vocab + 2, a.n_actions, a.net)
    target = QNet(a.vocab + 2, a.n_actions, a.net)
    target.load_state_dict(online.state_dict())
    opt = torch.optim.Adam(online.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    active = min(max(a.active_vocab or a.vocab, 1), a.vocab)
    obs = torch.randint(2, active + 2, (a.batch, a.tokens), generator=g)
    next_obs = torch.randint(2, active + 2, (a.batch, a.tokens), generator=g)
    actions = torch.randint(0, a.n_actions, (a.batch,), generator=g)
    rewards = (torch.rand(a.batch, generator=g) < 0.2).float()
    terminated = (torch.rand(a.batch, generator=g) < 0.1).float()
    updates = 0

    def update():
        nonlocal updates
        q_sa = online(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            next_q_target = target(next_obs)
            best = online(next_obs).argmax(1, keepdim=True)
            y = rewards + (1.0 - terminated) * next_q_target.gather(1, best).squeeze(1) * gamma
        loss = F.huber_loss(q_sa, y, delta=1.0)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(online.parameters(), 10.0)
        opt.step()
        updates += 1
        if updates % target_every == 0:
            target.load_state_dict(online.state_dict())
        return loss.item()

    for _ in range(10):
        update()
    start, timed = time.perf_counter(), 0
    while time.perf_counter() - start < a.seconds or timed < 20:
        update()
        timed += 1
    update_s = time.perf_counter() - start

    with torch.no_grad():
        for _ in range(20):
            online(obs)
        ms = []
        for _ in range(max(a.runs, 1)):
            t = time.perf_counter()
            online(obs)
            ms.append((time.perf_counter() - t) * 1e3)
    ms.sort()

    def pct(q):
        return ms[round((len(ms) - 1) * q)]

    print(json.dumps({
        "impl": "python",
        "net": a.net,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "tokens": a.tokens,
        "vocab": a.vocab,
        "active_vocab": active,
        "n_actions": a.n_actions,
        "updates": timed,
        "update_seconds": update_s,
        "updates_per_s": timed / update_s,
        "infer_ms": {"median": pct(0.5), "p99": pct(0.99), "mean": sum(ms) / len(ms), "runs": len(ms)},
    }))


if __name__ == "__main__":
    main()

"""Python side of scripts/bench_tower.sh: the DQN of `--dqn-preset fashion` (the tower head with
the sparse wide table) at the full catalogue's size in PyTorch, the same work as
agent-svc/examples/bench_tower.rs does through tch (same libtorch, same thread count). Prints one
JSON object.

Network: token Embedding(vocab + 2, 64, padding_idx=0); the state tower averages a state's
non-padding token embeddings, concatenates its first token's (the product id token), then
Dense 64 ReLU -> Linear(64 -> d). The item tower: an id Embedding(n + 1, d), plus
Linear(64 -> d, no bias) of the mean token embedding of the item's own text (EmbeddingBag over
the same token table); a bias Embedding(n + 1, 1); the sparse wide table Embedding(pairs + 1, 1)
indexed by a dict of (state's item, action) pairs. The item and pair tables are `sparse=True`
and trained with SparseAdam (PyTorch's way to update only the rows a batch reads, as the Rust
learner does); the dense weights with Adam. Both lr 3e-3. Gradient clipping (10) on the dense
weights only: torch's clip_grad_norm_ does not take sparse gradients (the Rust side clips all).

Update: a batch of 64 full-feedback transitions from a replay of 2,000; each row scores its
action, its positives and the batch's shared negatives; Huber loss weighted within the row;
backward; the optimisers; a target copy every 200 updates; `loss.item()`.
Inference: the state tower on 64 states, then the catalogue scored block by block (8,192 items)
against the cached item matrix with the pairs' offsets, keeping each block's best (what the
Rust policy does); timed one call at a time. Also timed: the whole [64, n] matrix and its argmax.
The item matrix's rebuild is timed apart. Memory: peak RSS (ru_maxrss).
"""
import argparse
import copy
import json
import random
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn


class Tower(nn.Module):
    def __init__(self, vocab_rows, n, d, pairs, emb=64, hidden=64):
        super().__init__()
        self.n = n
        self.embedding = nn.Embedding(vocab_rows, emb, padding_idx=0)
        self.dense = nn.Linear(2 * emb, hidden)
        self.state_out = nn.Linear(hidden, d)
        self.item_text = nn.Linear(emb, d, bias=False)
        self.item_id = nn.Embedding(n + 1, d, sparse=True)
        nn.init.normal_(self.item_id.weight, 0.0, 0.01)
        self.item_bias = nn.Embedding(n + 1, 1, sparse=True)
        nn.init.zeros_(self.item_bias.weight)
        self.wide = nn.Embedding(pairs + 1, 1, sparse=True)
        nn.init.zeros_(self.wide.weight)

    def state_vec(self, ids):
        e = self.embedding(ids)
        mask = (ids != 0).float().unsqueeze(-1)
        mean = (e * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        x = torch.cat([mean, e[:, 0]], 1)
        return self.state_out(F.relu(self.dense(x)))

    def item_vecs(self, items, flat, offsets):
        text = F.embedding_bag(flat, self.embedding.weight, offsets, mode="mean")
        return self.item_id(items) + self.item_text(text)


def bags(item_tokens, items):
    flat, offsets = [], []
    for i in items:
        offsets.append(len(flat))
        flat.extend(item_tokens[i])
    return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--item-tokens", type=int, default=16)
    p.add_argument("--n-actions", type=int, default=186_637)
    p.add_argument("--vocab", type=int, default=20_000)
    p.add_argument("--tower-dim", type=int, default=64)
    p.add_argument("--positives", type=int, default=10)
    p.add_argument("--negatives", type=int, default=256)
    p.add_argument("--wide-pairs", type=int, default=1_000_000)
    p.add_argument("--pairs", type=int, default=200_000)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    n, B = a.n_actions, a.batch
    word = lambda: rng.randrange(2, a.vocab + 2)
    item_tokens = [[word() for _ in range(a.item_tokens)] for _ in range(n)]
    slot_of, by_item = {}, {}
    for _ in range(a.pairs):
        key = (rng.randrange(n), rng.randrange(n))
        if key not in slot_of and len(slot_of) < a.wide_pairs:
            slot_of[key] = len(slot_of)
            by_item.setdefault(key[0], []).append((key[1], slot_of[key]))
    spare = a.wide_pairs
    replay = []
    for _ in range(2000):
        obs = [word() for _ in range(a.tokens)]
        pos = [(rng.randrange(n), 0.6 ** k) for k in range(a.positives)]
        replay.append((obs, rng.randrange(n), rng.randrange(n), pos))

    online = Tower(a.vocab + 2, n, a.tower_dim, a.wide_pairs)
    target = copy.deepcopy(online)
    sparse = [online.item_id.weight, online.item_bias.weight, online.wide.weight]
    dense = [q for q in online.parameters() if all(q is not s for s in sparse)]
    opt_dense = torch.optim.Adam(dense, lr=3e-3)
    opt_sparse = torch.optim.SparseAdam(sparse, lr=3e-3)
    updates = 0

    def update():
        nonlocal updates
        rows = [replay[rng.randrange(len(replay))] for _ in range(B)]
        negatives = [rng.randrange(n) for _ in range(a.negatives)]
        obs = torch.tensor([r[0] for r in rows])
        per_row = 1 + a.positives
        row_cands, targets, weights = [], [], []
        for _, item, action, pos in rows:
            tmap = dict(pos)
            row_cands.append([action] + [q for q, _ in pos])
            targets.append([tmap.get(action, 0.0)] + [r for _, r in pos] + [tmap.get(c, 0.0) for c in negatives])
            weights.append([1.0] * per_row + [1.0] * len(negatives))
        distinct = sorted(set(c for r in row_cands for c in r) | set(negatives))
        at = {c: i for i, c in enumerate(distinct)}
        flat, offsets = bags(item_tokens, distinct)
        items = torch.tensor(distinct)
        v = online.item_vecs(items, flat, offsets)
        bias = online.item_bias(items).squeeze(1)
        u = online.state_vec(obs)
        rc = torch.tensor([[at[c] for c in r] for r in row_cands])
        q_rows = (u.unsqueeze(1) * v[rc]).sum(-1) + bias[rc]
        nc = torch.tensor([at[c] for c in negatives])
        q_neg = u @ v[nc].T + bias[nc]
        q = torch.cat([q_rows, q_neg], 1)
        cands = [r + negatives for r in row_cands]
        slots = torch.tensor([[slot_of.get((rows[b][1], c), spare) for c in cands[b]] for b in range(B)])
        mask = (slots != spare).float()
        q = q + online.wide(slots).squeeze(-1) * mask
        t, w = torch.tensor(targets), torch.tensor(weights)
        loss = ((F.huber_loss(q, t, reduction="none", delta=1.0) * w).sum(1) / w.sum(1)).mean()
        opt_dense.zero_grad()
        opt_sparse.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dense, 10.0)
        opt_dense.step()
        opt_sparse.step()
        updates += 1
        if updates % 200 == 0:
            target.load_state_dict(online.state_dict())
        return loss.item()

    for _ in range(10):
        update()
    updates = 0
    start = time.perf_counter()
    while time.perf_counter() - start < a.seconds or updates < 20:
        update()
    update_s = time.perf_counter() - start

    inference = copy.deepcopy(online)
    with torch.no_grad():
        t0 = time.perf_counter()
        flat, offsets = bags(item_tokens, range(n))
        v = inference.item_vecs(torch.arange(n), flat, offsets)
        b = inference.item_bias.weight[:n, 0]
        rebuild_ms = (time.perf_counter() - t0) * 1e3
        ids = torch.tensor([[word() for _ in range(a.tokens)] for _ in range(B)])
        states = [rng.randrange(n) for _ in range(B)]

        def offsets():
            rows, cols, slots = [], [], []
            for r, s in enumerate(states):
                for act, slot in by_item.get(s, ()):
                    rows.append(r)
                    cols.append(act)
                    slots.append(slot)
            return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long), inference.wide.weight[torch.tensor(slots, dtype=torch.long), 0]

        def full():
            q = torch.addmm(b, inference.state_vec(ids), v.T)
            rows, cols, vals = offsets()
            q.index_put_((rows, cols), vals, accumulate=True)
            return q.argmax(1)

        def blocked(block=8192):
            u = inference.state_vec(ids)
            rows, cols, vals = offsets()
            best = torch.full((B,), float("-inf"))
            arg = torch.zeros(B, dtype=torch.long)
            for s in range(0, n, block):
                q = torch.addmm(b[s:s + block], u, v[s:s + block].T)
                here = (cols >= s) & (cols < s + block)
                q.index_put_((rows[here], cols[here] - s), vals[here], accumulate=True)
                m, i = q.max(1)
                better = m > best
                best = torch.where(better, m, best)
                arg = torch.where(better, i + s, arg)
            return arg

        assert torch.equal(full(), blocked()), "blocked and full argmax differ"

        def timed(f):
            for _ in range(10):
                f()
            ms = []
            for _ in range(max(a.runs, 1)):
                t0 = time.perf_counter()
                f()
                ms.append((time.perf_counter() - t0) * 1e3)
            return sorted(ms)

        ms, full_ms = timed(blocked), timed(full)
    pct = lambda q, ms=ms: ms[round((len(ms) - 1) * q)]
    print(json.dumps({
        "impl": "python",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "n_actions": n,
        "batch": B,
        "tower_dim": a.tower_dim,
        "negatives": a.negatives,
        "positives": a.positives,
        "pairs": len(slot_of),
        "updates": updates,
        "update_seconds": update_s,
        "updates_per_s": updates / update_s,
        "item_matrix_rebuild_ms": rebuild_ms,
        "infer_ms": {"median": pct(0.5), "p99": pct(0.99), "max": pct(1.0), "runs": len(ms)},
        "infer_full_matrix_ms": {"median": pct(0.5, full_ms), "p99": pct(0.99, full_ms), "runs": len(full_ms)},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()

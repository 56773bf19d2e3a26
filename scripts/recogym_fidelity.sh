#!/usr/bin/env bash
# Fidelity check of the Rust port `recogym` against the Python RecoGym 0.1.3.0: for each
# configuration, RecoGym's own A/B protocol (scripts/recogym_py/ab.py: gather_agent_stats /
# test_agent with RandomAgent and OrganicCount) and `recogym ab` with the same settings, then a
# comparison per agent and configuration. Prints a table, writes target/recogym/fidelity.json
# (and the raw results under target/recogym/fidelity/), exits 1 if a check fails.
#
# The check (RECOGYM_FIDELITY_CHECK; both are computed and shown either way):
#   z       (default) |CTR_py - CTR_rust| / sqrt(se_py^2 + se_rust^2) <= z*, the two-sided
#           critical value for a 5% family-wise error over all comparisons (Bonferroni;
#           2.64 for the default 6); se = (hi - lo) / 3.92 from each side's 95% interval.
#   within  each side's CTR lies within the other side's 95% interval (the Beta posterior
#           quantiles both sides report). The two sides draw users from independent streams,
#           so even a perfect port fails this with probability about 17% per comparison
#           (|Z| > 1.96/sqrt 2), about 2 runs in 3 over 6 comparisons.
#
# The world: Python draws the products (Gamma, mu_organic) from RandomState(seed), the port
# from its own ChaCha streams, so the same seed gives two different worlds, and at 10 products
# the CTR varies more from world to world (about +-10% relative) than within one run. When
# `recogym ab --help` offers --world, the port is run on the world Python drew (ab.py
# --dump-world: JSON {num_products, K, random_seed, gamma: P x K, mu_organic: P}); otherwise the
# table says "own world" and the comparison mixes world-to-world variation with porting errors.
#
# Environment:
#   RECOGYM_FIDELITY_USERS        A/B users N on both sides (default 4000)
#   RECOGYM_FIDELITY_TRAIN_USERS  offline training users M (default 1000; plus recogym's
#                                 default 100 organic-only users on both sides)
#   RECOGYM_FIDELITY_CONFIGS      space-separated NAME:PRODUCTS:SEED[:KEY=VALUE[,KEY=VALUE]]
#                                 (default "p10:10:42 p100:100:7 p10-flips:10:42:number_of_flips=4")
#   RECOGYM_FIDELITY_CHECK        z | within (default z)
#   RECOGYM_FIDELITY_RERUN_PYTHON 1: rerun Python even when its saved results match (they are
#                                 deterministic and reused while ab.py, rgload.py,
#                                 requirements.txt and the arguments are unchanged)
#   CARGO_TARGET_DIR              where cargo builds (default target)
# Python side: about 3-4 minutes with the defaults on this 2-core machine (~7 ms per user and
# agent), the first time; the Rust side a few seconds.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi
[[ $# -eq 0 ]] || { echo "recogym_fidelity.sh: no arguments expected (try --help)" >&2; exit 2; }

cd "$(dirname "$0")/.."
USERS=${RECOGYM_FIDELITY_USERS:-4000}
TRAIN=${RECOGYM_FIDELITY_TRAIN_USERS:-1000}
CONFIGS=${RECOGYM_FIDELITY_CONFIGS:-p10:10:42 p100:100:7 p10-flips:10:42:number_of_flips=4}
CHECK=${RECOGYM_FIDELITY_CHECK:-z}
[[ $CHECK == within || $CHECK == z ]] || { echo "RECOGYM_FIDELITY_CHECK must be within or z" >&2; exit 2; }
out=target/recogym
raw=$out/fidelity
mkdir -p "$raw"

py=$(scripts/recogym_py/setup.sh)
manifest=$raw/manifest.tsv
: > "$manifest"
for cfg in $CONFIGS; do
  IFS=: read -r name products seed extra <<< "$cfg"
  [[ -n $name && $products =~ ^[0-9]+$ && $seed =~ ^[0-9]+$ ]] \
    || { echo "bad configuration '$cfg' (NAME:PRODUCTS:SEED[:KEY=VALUE,...])" >&2; exit 2; }
  env_args=()
  if [[ -n ${extra:-} ]]; then
    IFS=, read -r -a kvs <<< "$extra"
    for kv in "${kvs[@]}"; do env_args+=(--env "$kv"); done
  fi
  common=(--agent random --agent organic-count --products "$products" --users "$USERS"
    --train-users "$TRAIN" --seed "$seed" "${env_args[@]}")
  # Python's results are deterministic: reuse them while the code, pins and arguments match.
  key=$(cat scripts/recogym_py/{ab.py,rgload.py,requirements.txt} <(printf '%s\n' "${common[@]}") \
    | sha256sum | cut -d' ' -f1)
  if [[ ${RECOGYM_FIDELITY_RERUN_PYTHON:-0} != 1 && -f $raw/$name.python.json && -f $raw/$name.world.json \
    && $(cat "$raw/$name.python.key" 2> /dev/null) == "$key" ]]; then
    echo "==> $name: python ab.py: reusing $raw/$name.python.json (same code and arguments)" >&2
  else
    echo "==> $name: python ab.py (P=$products, seed=$seed, N=$USERS, M=$TRAIN${extra:+, $extra})" >&2
    rm -f "$raw/$name.python.key"
    "$py" scripts/recogym_py/ab.py "${common[@]}" --out "$raw/$name.python.json" \
      --dump-world "$raw/$name.world.json" > /dev/null
    echo "$key" > "$raw/$name.python.key"
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$products" "$seed" "${extra:-}" >> "$manifest"
done

# Then the port, with exactly the same arguments (and Python's world when it can load one).
echo "==> building recogym (release)" >&2
cargo build --release --locked -p recogym --bin recogym
bin=${CARGO_TARGET_DIR:-target}/release/recogym
rust_world=0
if "$bin" ab --help | grep -q -- '--world'; then rust_world=1; fi
while IFS=$'\t' read -r name products seed extra; do
  env_args=()
  if [[ -n $extra ]]; then
    IFS=, read -r -a kvs <<< "$extra"
    for kv in "${kvs[@]}"; do env_args+=(--env "$kv"); done
  fi
  world_args=()
  what="its own world"
  if ((rust_world)); then
    world_args=(--world "$raw/$name.world.json")
    what="the world Python drew"
  fi
  echo "==> $name: recogym ab on $what" >&2
  "$bin" ab --agent random --agent organic-count --products "$products" --users "$USERS" \
    --train-users "$TRAIN" --seed "$seed" "${env_args[@]}" "${world_args[@]}" \
    --json --out "$raw/$name.rust.json" > /dev/null
done < "$manifest"

python3 - "$manifest" "$raw" "$out/fidelity.json" "$CHECK" "$USERS" "$TRAIN" "$rust_world" << 'PYEOF'
import json, math, statistics, sys

manifest, raw, dest, check, users, train, same_world = sys.argv[1:8]
nd = statistics.NormalDist()
rows = [line.rstrip("\n").split("\t") for line in open(manifest) if line.strip()]
configs, comparisons = [], []
for name, products, seed, extra in (row + [""] * (4 - len(row)) for row in rows):
    py = json.load(open(f"{raw}/{name}.python.json"))
    rs = json.load(open(f"{raw}/{name}.rust.json"))
    # The settings both sides report must agree on every parameter they share.
    mismatched = {k: (py["settings"][k], rs["settings"][k]) for k in py["settings"].keys() & rs["settings"].keys()
                  if not (py["settings"][k] == rs["settings"][k]
                          or (isinstance(py["settings"][k], (int, float)) and isinstance(rs["settings"][k], (int, float))
                              and math.isclose(py["settings"][k], rs["settings"][k])))}
    cfg = {"name": name, "products": int(products), "seed": int(seed), "env": extra, "users": int(users),
           "train_users": int(train), "same_world": same_world == "1", "settings_mismatch": mismatched,
           "python_seconds": py["seconds"], "rust_seconds": rs["seconds"], "agents": {}}
    for agent in py["agents"]:
        p, r = py["agents"][agent], rs["agents"].get(agent)
        if r is None:
            cfg["agents"][agent] = {"python": p, "rust": None, "pass": False}
            comparisons.append(cfg["agents"][agent])
            continue
        se_p, se_r = (p["hi"] - p["lo"]) / 3.92, (r["hi"] - r["lo"]) / 3.92
        z = (p["ctr"] - r["ctr"]) / math.sqrt(se_p ** 2 + se_r ** 2)
        entry = {"python": p, "rust": r,
                 "python_in_rust_interval": r["lo"] <= p["ctr"] <= r["hi"],
                 "rust_in_python_interval": p["lo"] <= r["ctr"] <= p["hi"],
                 "z": z, "p_value": 2 * (1 - nd.cdf(abs(z))),
                 "impressions_per_user": {"python": p["impressions"] / p["users"], "rust": r["impressions"] / r["users"]}}
        cfg["agents"][agent] = entry
        comparisons.append(entry)
    configs.append(cfg)

k = max(1, len(comparisons))
z_crit = nd.inv_cdf(1 - 0.05 / (2 * k))
for e in comparisons:
    if e.get("rust") is None:
        continue
    e["pass_within"] = e["python_in_rust_interval"] and e["rust_in_python_interval"]
    e["pass_z"] = abs(e["z"]) <= z_crit
    e["pass"] = e["pass_within"] if check == "within" else e["pass_z"]
settings_ok = all(not c["settings_mismatch"] for c in configs)
passed = settings_ok and all(e["pass"] for e in comparisons)

print(f"\nRecoGym fidelity: Python recogym 0.1.3.0 vs Rust port, N={users} A/B users, M={train} training users "
      f"(+100 organic-only), check: {check}" + (f" (z* = {z_crit:.2f}, {k} comparisons)" if check == "z" else ""))
hdr = f"{'config':12} {'agent':14} {'python ctr% [95%]':26} {'rust ctr% [95%]':26} {'impr/user py rs':>16} {'z':>6}  {'within':6} {'z-test':6} world"
print(hdr)
print("-" * len(hdr))
for c in configs:
    for agent, e in c["agents"].items():
        p, r = e["python"], e["rust"]
        fmt = lambda s: f"{100 * s['ctr']:.4f} [{100 * s['lo']:.4f},{100 * s['hi']:.4f}]"
        if r is None:
            print(f"{c['name']:12} {agent:14} {fmt(p):26} {'(missing)':26}")
            continue
        ipu = e["impressions_per_user"]
        print(f"{c['name']:12} {agent:14} {fmt(p):26} {fmt(r):26} {ipu['python']:7.2f} {ipu['rust']:7.2f} {e['z']:6.2f}  "
              f"{'ok' if e['pass_within'] else 'FAIL':6} {'ok' if e['pass_z'] else 'FAIL':6} "
              f"{'shared' if c['same_world'] else 'own'}")
    if c["settings_mismatch"]:
        print(f"{c['name']:12} settings differ: {c['settings_mismatch']}")
    print(f"{c['name']:12} seconds: python {c['python_seconds']:.1f}, rust {c['rust_seconds']:.2f}")
if not all(c["same_world"] for c in configs):
    print("note: 'own' world: the port drew its own products for the seed (no --world option), so differences"
          " include world-to-world variation, not only porting errors")
report = {"check": check, "z_critical": z_crit, "users": int(users), "train_users": int(train),
          "organic_train_users": 100, "passed": passed, "configs": configs}
json.dump(report, open(dest, "w"), indent=2)
print(f"{'PASS' if passed else 'FAIL'}: wrote {dest}")
sys.exit(0 if passed else 1)
PYEOF

"""Collects the benchmark outputs of scripts/bench.sh into one table and target/bench/report.json."""
import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
only_shared = sys.argv[2:] == ["--only", "shared"]


def shared_section():
    """Part (g), scripts/bench_shared.sh: one learner for three replicas."""
    load = lambda name: json.loads((out / name).read_text())
    random3 = {linger: load(f"throughput-kafka-3-linger{linger}.json") for linger in (0, 10)}
    shared, live = load("throughput-kafka-shared.json"), load("learner-live.json")
    offline = {m: load(f"learner-{m}.json") for m in ("kafka", "memory")}
    pp_text = (out / "producer-perf.txt").read_text()
    pp = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", pp_text)
    if not pp:
        sys.exit(f"ProducerPerformance printed no summary:\n{pp_text}")
    limit = float(pp[-1][1]) / 2
    return {
        "command": "scripts/bench_shared.sh (make bench, part g); BENCH_EPISODES episodes on data/sample, 256 concurrent",
        "concurrent_episodes": 256,
        "replicas": 3,
        "producer_perf_records_per_s": float(pp[-1][1]),
        "cluster_limit_steps_per_s": limit,
        "random_3_replicas_linger0_steps_per_s": random3[0]["steps_per_s"],
        "random_3_replicas_linger10_steps_per_s": random3[10]["steps_per_s"],
        "dqn_shared_3_replicas_linger10_steps_per_s": shared["steps_per_s"],
        "random_3_replicas_linger0_over_limit": random3[0]["steps_per_s"] / limit,
        "random_3_replicas_linger10_over_limit": random3[10]["steps_per_s"] / limit,
        "dqn_shared_over_limit": shared["steps_per_s"] / limit,
        "target_over_limit": 0.5,
        "staleness_ms": {
            "p50": live.get("staleness_ms_p50"),
            "p99": live.get("staleness_ms_p99"),
            "measured": live.get("staleness_measured"),
        },
        "versions_published": live.get("versions"),
        "live_learner": {k: live.get(k) for k in ("transitions", "updates", "skipped_updates", "states", "actions")},
        "policy_lag_updates": {"p50": live.get("policy_lag_updates_p50"), "p99": live.get("policy_lag_updates_p99")},
        "learner_updates_per_s": {
            "kafka": offline["kafka"]["updates_per_s"],
            "memory": offline["memory"]["updates_per_s"],
            "kafka_over_memory": offline["kafka"]["updates_per_s"] / max(offline["memory"]["updates_per_s"], 1e-9),
            "transitions": offline["kafka"]["transitions"],
            "updates": offline["kafka"]["updates"],
        },
    }


def print_shared(g):
    limit = g["cluster_limit_steps_per_s"]
    print(f"(g) cluster limit (ProducerPerformance/2) {limit:8.0f} steps/s ({g['producer_perf_records_per_s']:.0f} records/s, acks=all, 600 B)")
    print(f"    steps/s, 3 replicas, random, linger 0 {g['random_3_replicas_linger0_steps_per_s']:8.0f}      limit {limit:6.0f}   {g['random_3_replicas_linger0_over_limit']:5.2f}x (goal >= 0.5x)")
    print(f"    steps/s, 3 replicas, random, linger 10{g['random_3_replicas_linger10_steps_per_s']:8.0f}      limit {limit:6.0f}   {g['random_3_replicas_linger10_over_limit']:5.2f}x")
    print(f"    steps/s, 3 DQN replicas + learner, 10 {g['dqn_shared_3_replicas_linger10_steps_per_s']:8.0f}      limit {limit:6.0f}   {g['dqn_shared_over_limit']:5.2f}x")
    st = g["staleness_ms"]
    print(f"    weight staleness p50 / p99            {st['p50']} / {st['p99']} ms over {st['measured']} (version, replica) pairs, {g['versions_published']} versions")
    lag = g["policy_lag_updates"]
    print(f"    policy lag p50 / p99 (updates)        {lag['p50']} / {lag['p99']}; live learner {g['live_learner']}")
    u = g["learner_updates_per_s"]
    print(f"    learner updates/s, from Kafka         {u['kafka']:8.1f}      memory {u['memory']:6.1f}   {u['kafka_over_memory']:5.2f}x Kafka/memory ({u['transitions']} transitions)")


if only_shared:
    g = shared_section()
    path = out / "report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report["shared_learner"] = g
    path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print_shared(g)
    sys.exit(0)

load = json.loads((out / "load.json").read_text())
rtt = json.loads((out / "rtt.json").read_text())
kafka = json.loads((out / "throughput-kafka.json").read_text())
memory = json.loads((out / "throughput-memory.json").read_text())
dqn = json.loads((out / "throughput-kafka-dqn.json").read_text())
e2e_text = (out / "e2e.txt").read_text()
pct = re.search(r"50th = ([\d.]+), 99th = ([\d.]+)", e2e_text)
avg = re.search(r"Avg latency: ([\d.]+)", e2e_text)
if not pct:
    sys.exit(f"EndToEndLatency printed no percentiles:\n{e2e_text}")
e2e_p50, e2e_p99 = float(pct.group(1)), float(pct.group(2))

report = {
    "load": {
        "reviews": load.get("reviews_read"),
        "seconds": load.get("seconds"),
        "peak_rss_mib": load.get("peak_rss_mib"),
        "target": {"seconds": 3.0, "peak_rss_mib": 1024},
    },
    "step_round_trip_ms": {
        "episodes_in_flight": 1,
        "steps": rtt["steps"],
        "p50": rtt["rtt_ms"]["p50"],
        "p99": rtt["rtt_ms"]["p99"],
        "kafka_end_to_end_ms": {"p50": e2e_p50, "p99": e2e_p99, "avg": float(avg.group(1)) if avg else None},
        "ratio_p50": rtt["rtt_ms"]["p50"] / max(e2e_p50, 1e-9),
        "ratio_p99": rtt["rtt_ms"]["p99"] / max(e2e_p99, 1e-9),
        # EndToEndLatency prints percentiles in whole milliseconds but the mean exactly.
        "mean": rtt["rtt_ms"]["mean"],
        "ratio_mean": rtt["rtt_ms"]["mean"] / max(float(avg.group(1)) if avg else 1e-9, 1e-9),
        "target_ratio": 2.2,
    },
    "throughput_steps_per_s": {
        "concurrent_episodes": 256,
        "kafka": kafka["steps_per_s"],
        "memory": memory["steps_per_s"],
        "memory_over_kafka": memory["steps_per_s"] / max(kafka["steps_per_s"], 1e-9),
        "kafka_steps": kafka["steps"],
        "memory_steps": memory["steps"],
        "kafka_dqn": dqn["steps_per_s"],
        "dqn_over_random_kafka": dqn["steps_per_s"] / max(kafka["steps_per_s"], 1e-9),
    },
    "shared_learner": shared_section(),
    "metrics_cost": json.loads((out / "metrics.json").read_text()),
}
(out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

r = report
print()
print("benchmark                                   value          baseline        ratio")
print(f"(a) load+preprocess 883,636 reviews       {r['load']['seconds']:8.2f} s      target 3 s")
print(f"    peak RSS                              {r['load']['peak_rss_mib']:8.0f} MiB    target 1024 MiB")
s = r["step_round_trip_ms"]
print(f"(b) step round trip p50                   {s['p50']:8.2f} ms     E2E {e2e_p50:6.2f} ms   {s['ratio_p50']:5.2f}x (target <= 2.2x)")
print(f"    step round trip p99                   {s['p99']:8.2f} ms     E2E {e2e_p99:6.2f} ms   {s['ratio_p99']:5.2f}x")
e2e_avg = s["kafka_end_to_end_ms"]["avg"] or 0.0
print(f"    step round trip mean                  {s['mean']:8.2f} ms     E2E {e2e_avg:6.2f} ms   {s['ratio_mean']:5.2f}x")
print("    (E2E: Kafka's EndToEndLatency, one produce-to-consume hop, acks=all, 600 B; percentiles in whole ms)")
t = r["throughput_steps_per_s"]
print(f"(c) steps/s, 256 episodes, Kafka          {t['kafka']:8.0f}")
print(f"    steps/s, 256 episodes, memory         {t['memory']:8.0f}                     {t['memory_over_kafka']:5.2f}x memory/Kafka")
print(f"    steps/s, 256 episodes, Kafka, DQN     {t['kafka_dqn']:8.0f}      random {t['kafka']:6.0f}   {t['dqn_over_random_kafka']:5.2f}x DQN/random")
print_shared(r["shared_learner"])
for name in ("kafka", "memory"):
    m = r["metrics_cost"][name]
    print(f"(h) steps/s, metrics on, {name:6}           {m['median_on']:8.0f}      off {m['median_off']:8.0f}  {m['median_pair_ratio']:5.3f}x on/off, median of pairs (goal >= 0.97)")
print(f"\nreport: {out / 'report.json'}")

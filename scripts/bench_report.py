"""Collects the benchmark outputs of scripts/bench.sh into one table and target/bench/report.json."""
import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
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
print(f"\nreport: {out / 'report.json'}")

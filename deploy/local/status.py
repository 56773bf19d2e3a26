"""Assembles `stack.sh status` into one JSON object from what the shell collected.

Inputs (environment): BROKERS (ids registered in ZooKeeper), DESCRIBE (kafka-topics --describe
output), SUBJECTS (registry JSON list), KEYSPACES (cqlsh SELECT output), SVCINFO (lines of
"service pid rss_kib"), TOPICS_ENV (path of deploy/topics.env), PROMETHEUS_URL, PROMETHEUS_READY
(non-empty when /-/ready answered), PROMETHEUS_TARGETS (the JSON of GET /api/v1/targets, empty when
Prometheus is down).
"""
import json
import os
import re


def topics_env(path):
    values = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key] = value
    return values


def parse_describe(text):
    topics = {}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+): (\S*)", line))
        name = fields.get("Topic")
        if not name:
            continue
        if "PartitionCount" in fields:
            configs = dict(kv.split("=", 1) for kv in re.findall(r"[\w.]+=[^,\s]+", line.split("Configs:", 1)[-1]))
            topics[name] = {
                "partitions": int(fields["PartitionCount"]),
                "replication_factor": int(fields["ReplicationFactor"]),
                "min_isr": int(configs.get("min.insync.replicas", "1")),
                "cleanup_policy": configs.get("cleanup.policy", "delete"),
                "under_replicated_partitions": 0,
                "min_in_sync_replicas_seen": None,
            }
        elif "Partition" in fields and name in topics:
            replicas = [r for r in fields.get("Replicas", "").split(",") if r]
            isr = [r for r in fields.get("Isr", "").split(",") if r]
            t = topics[name]
            if len(isr) < len(replicas):
                t["under_replicated_partitions"] += 1
            seen = t["min_in_sync_replicas_seen"]
            t["min_in_sync_replicas_seen"] = len(isr) if seen is None else min(seen, len(isr))
    return topics


def parse_keyspaces(text):
    names = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("keyspace_name", "-", "(", "WARNING")):
            continue
        names.append(line)
    return sorted(names)


def prometheus(url, ready, targets_json):
    """Prometheus's URL, whether it is ready, and the health of each active scrape target."""
    targets = []
    try:
        active = json.loads(targets_json)["data"]["activeTargets"] if targets_json else []
    except (ValueError, KeyError, TypeError):
        active = []
    for t in active:
        labels = t.get("labels") or {}
        targets.append({
            "job": labels.get("job", t.get("scrapePool", "")),
            "instance": labels.get("instance", t.get("scrapeUrl", "")),
            "health": t.get("health", "unknown"),
            "lastError": t.get("lastError", ""),
            "lastScrapeDuration": t.get("lastScrapeDuration"),
        })
    targets.sort(key=lambda t: (t["job"], t["instance"]))
    return {"url": url, "ready": bool(ready), "targets": targets}


def main():
    env = topics_env(os.environ["TOPICS_ENV"])
    described = parse_describe(os.environ.get("DESCRIBE", ""))
    topics = {}
    # Every *_TOPIC of topics.env: each environment's three and the weights topic.
    for key in (k for k in env if k.endswith("_TOPIC")):
        name = env[key]
        topics[name] = described.get(name, {"exists": False})
    services = {}
    total_kib = 0
    for line in os.environ.get("SVCINFO", "").splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        name, pid, rss = parts
        running = pid != "none"
        services[name] = {"running": running, "pid": int(pid) if running else None, "rss_mib": round(int(rss) / 1024, 1)}
        total_kib += int(rss)
    try:
        subjects = sorted(json.loads(os.environ.get("SUBJECTS", "[]")))
    except ValueError:
        subjects = []
    report = {
        "brokers": [int(b) for b in os.environ.get("BROKERS", "").split()],
        "topics": topics,
        "subjects": subjects,
        "keyspaces": parse_keyspaces(os.environ.get("KEYSPACES", "")),
        "services": services,
        "prometheus": prometheus(os.environ.get("PROMETHEUS_URL", ""), os.environ.get("PROMETHEUS_READY", ""),
                                 os.environ.get("PROMETHEUS_TARGETS", "")),
        "total_rss_mib": round(total_kib / 1024, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

// k8s-check holds the rendered Kubernetes overlays (deploy/k8s) to the same sources as
// docker-compose.yml and the local stack: topics and partition counts (deploy/topics.env through
// deploy/init/create-topics.sh), schema subjects and files (register-schemas.sh --list,
// protocol/schemas), image names and versions (.env.example, compose, deploy/local/stack.sh,
// Cargo.toml), ports and addresses (compose, stack.sh), the autoscaler's group, topic and ceiling,
// and what the prod overlay promises (requests and limits, budgets, anti-affinity, NetworkPolicies).
// It prints one line per overlay and every broken rule, and exits non-zero when any rule breaks.
//
//	k8s-check [-root .] -overlay dev=dev.yaml -overlay prod=prod.yaml [-selftest] [-pods DIR] [-rules=false]
//
// -pods DIR also writes each workload's pod template as a Pod (see pods.go) for a dry run of its own.
// -selftest first checks that the real inputs pass, then breaks a copy of them in one place at a
// time (a partition count, an image tag, a schema, a port, ...) and fails unless every broken copy
// is caught by the rule meant for it: proof that the check can fail.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

type overlayFlags []string

func (o *overlayFlags) String() string     { return strings.Join(*o, ",") }
func (o *overlayFlags) Set(v string) error { *o = append(*o, v); return nil }

func main() {
	root := flag.String("root", ".", "repository root")
	selftest := flag.Bool("selftest", false, "also prove that broken copies of the inputs are caught")
	rules := flag.Bool("rules", true, "check the consistency rules (false: only -pods)")
	pods := flag.String("pods", "", "also write every workload's pod template as a Pod under DIR/<overlay>/, for a dry run")
	var overlays overlayFlags
	flag.Var(&overlays, "overlay", "NAME=RENDERED.yaml (repeatable; NAME prod gets the prod rules)")
	flag.Parse()
	if len(overlays) == 0 {
		fmt.Fprintln(os.Stderr, "k8s-check: give at least one -overlay NAME=RENDERED.yaml")
		os.Exit(2)
	}
	in, err := load(*root, overlays)
	if err != nil {
		fmt.Fprintln(os.Stderr, "k8s-check:", err)
		os.Exit(1)
	}
	if *pods != "" {
		counts, err := writePodTemplates(in, *pods)
		if err != nil {
			fmt.Fprintln(os.Stderr, "k8s-check:", err)
			os.Exit(1)
		}
		for _, ov := range in.OverlayOrder {
			fmt.Printf("overlay %s: %d pod templates written to %s\n", ov, counts[ov], *pods)
		}
	}
	if !*rules {
		return
	}
	fmt.Printf("sources: %d topics (create-topics.sh), %d subjects (register-schemas.sh), Kafka %s and Cassandra %s (local stack), CP %s, workspace %s\n",
		len(in.Topics), len(in.Subjects), in.Stack["KAFKA_VERSION"], in.Stack["CASSANDRA_VERSION"], in.EnvExample["CP_VERSION"], in.WorkspaceVersion)
	for _, ov := range in.OverlayOrder {
		objs := in.Overlays[ov]
		fmt.Printf("overlay %s: %d objects, %d KafkaTopics, %d workloads\n", ov, len(objs), len(ofKind(objs, "KafkaTopic")), len(workloads(objs)))
	}
	problems := check(in)
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, "rule broken:", p)
	}
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "k8s-check: %d rule(s) broken: deploy/k8s disagrees with compose or the local stack\n", len(problems))
		os.Exit(1)
	}
	fmt.Println("consistency: ok")
	if *selftest {
		if failed := runSelftest(in); failed > 0 {
			fmt.Fprintf(os.Stderr, "k8s-check: self-test: %d broken cop(ies) NOT caught\n", failed)
			os.Exit(1)
		}
	}
}

// mutation breaks a copy of the inputs in one place; want is a fragment of the problem it must cause.
type mutation struct {
	name, want string
	apply      func(in *Inputs) bool // false: the thing to break was not found
}

func each(in *Inputs, ov, k string, f func(o Obj) bool) bool {
	for _, o := range in.Overlays[ov] {
		if kind(o) == k && f(o) {
			return true
		}
	}
	return false
}

func set(o any, v any, path ...string) bool {
	m, ok := get(o, path[:len(path)-1]...).(map[string]any)
	if !ok {
		return false
	}
	m[path[len(path)-1]] = v
	return true
}

func mainOf(in *Inputs, ov, app string) map[string]any {
	if w := workload(in.Overlays[ov], app); w != nil {
		return w.mainContainer()
	}
	return nil
}

var mutations = []mutation{
	{"partition count of fashion_state changed in the prod KafkaTopic", "partitions in the KafkaTopic", func(in *Inputs) bool {
		return each(in, "prod", "KafkaTopic", func(o Obj) bool {
			return str(o, "spec", "topicName") == "fashion_state" && set(o, 5, "spec", "partitions")
		})
	}},
	{"TOPIC_PARTITIONS changed in topics.env, manifests not regenerated", "partitions", func(in *Inputs) bool {
		in.TopicsEnv["TOPIC_PARTITIONS"] = "12"
		for i := range in.Topics {
			if in.Topics[i].Partitions > 1 {
				in.Topics[i].Partitions = 12
			}
		}
		return true
	}},
	{"KafkaTopic recogym_state dropped from dev", "has no KafkaTopic", func(in *Inputs) bool {
		objs := in.Overlays["dev"]
		for i, o := range objs {
			if kind(o) == "KafkaTopic" && str(o, "spec", "topicName") == "recogym_state" {
				in.Overlays["dev"] = append(objs[:i:i], objs[i+1:]...)
				return true
			}
		}
		return false
	}},
	{"prod topic with RF 2", "replication factor", func(in *Inputs) bool {
		return each(in, "prod", "KafkaTopic", func(o Obj) bool { return set(o, 2, "spec", "replicas") })
	}},
	{"schema file missing from the schemas ConfigMap", "is missing from ConfigMap streamrec-schemas", func(in *Inputs) bool {
		cm := configMap(in.Overlays["prod"], "streamrec-schemas")
		d, _ := get(cm, "data").(map[string]any)
		delete(d, "fashion_action-value.json")
		return cm != nil
	}},
	{"schema in the ConfigMap differs from protocol/schemas", "differs from protocol/schemas", func(in *Inputs) bool {
		return set(configMap(in.Overlays["dev"], "streamrec-schemas"), "{}", "data", "fashion_state-value.json")
	}},
	{"new subject in topics.env without its schema in the ConfigMap", "is missing from ConfigMap", func(in *Inputs) bool {
		in.Subjects = append(in.Subjects, Subject{Name: "shop_state-value", File: "protocol/schemas/shop_state-value.json"})
		return true
	}},
	{"agent-svc image tag in prod is not the workspace version", "image tag", func(in *Inputs) bool {
		return set(mainOf(in, "prod", "agent-svc"), "streamrec/agent-svc:latest", "image")
	}},
	{"env-svc image renamed", "compose's env-svc runs streamrec/env-svc", func(in *Inputs) bool {
		return set(mainOf(in, "dev", "env-svc"), "streamrec/env:local", "image")
	}},
	{"registry image version differs from CP_VERSION", "compose runs confluentinc/cp-schema-registry", func(in *Inputs) bool {
		return set(mainOf(in, "prod", "schema-registry"), "confluentinc/cp-schema-registry:7.8.0", "image")
	}},
	{"CP_VERSION in .env.example moved, compose default not", "docker-compose.yml defaults to", func(in *Inputs) bool {
		in.EnvExample["CP_VERSION"] = "7.9.2"
		return true
	}},
	{"Cassandra serverVersion differs from CASSANDRA_VERSION", "serverVersion", func(in *Inputs) bool {
		return each(in, "prod", "CassandraDatacenter", func(o Obj) bool { return set(o, "4.1.5", "spec", "serverVersion") })
	}},
	{"Kafka 3.8 instead of the local stack's 3.9", "Kafka version", func(in *Inputs) bool {
		return each(in, "dev", "Kafka", func(o Obj) bool { return set(o, "3.8.1", "spec", "kafka", "version") })
	}},
	{"METRICS_ADDR on another port", "METRICS_ADDR", func(in *Inputs) bool {
		return set(configMap(in.Overlays["prod"], "streamrec-config"), "0.0.0.0:9401", "data", "METRICS_ADDR")
	}},
	{"readiness probe on /healthz", "readinessProbe", func(in *Inputs) bool {
		return set(mainOf(in, "prod", "agent-learner"), "/healthz", "readinessProbe", "httpGet", "path")
	}},
	{"registry Service on 8082", "registry port", func(in *Inputs) bool {
		return each(in, "dev", "Service", func(o Obj) bool {
			return name(o) == "schema-registry" && set(list(o, "spec", "ports")[0], 8082, "port")
		})
	}},
	{"Kafka listener on 9093", "Kafka listener `plain`", func(in *Inputs) bool {
		return each(in, "prod", "Kafka", func(o Obj) bool { return set(list(o, "spec", "kafka", "listeners")[0], 9093, "port") })
	}},
	{"KEDA ceiling above the partition count", "maxReplicaCount", func(in *Inputs) bool {
		return each(in, "prod", "ScaledObject", func(o Obj) bool { return set(o, 12, "spec", "maxReplicaCount") })
	}},
	{"KEDA watching another consumer group", "lag of group", func(in *Inputs) bool {
		return each(in, "dev", "ScaledObject", func(o Obj) bool { return set(list(o, "spec", "triggers")[0], "agents", "metadata", "consumerGroup") })
	}},
	{"KEDA given the brokers' short name (unresolvable from KEDA's namespace)", "bootstrapServers", func(in *Inputs) bool {
		return each(in, "prod", "ScaledObject", func(o Obj) bool {
			return set(list(o, "spec", "triggers")[0], "streamrec-kafka-bootstrap:9092", "metadata", "bootstrapServers")
		})
	}},
	{"archive keyspace replicated beyond the datacenter's size", "ARCHIVER_REPLICATION", func(in *Inputs) bool {
		return each(in, "prod", "CassandraDatacenter", func(o Obj) bool { return set(o, 2, "spec", "size") })
	}},
	{"two learners", "there is exactly one learner", func(in *Inputs) bool {
		return each(in, "prod", "StatefulSet", func(o Obj) bool { return name(o) == "agent-learner" && set(o, 2, "spec", "replicas") })
	}},
	{"a committed Secret value", "carries values", func(in *Inputs) bool {
		in.Overlays["prod"] = append(in.Overlays["prod"], Obj{"apiVersion": "v1", "kind": "Secret",
			"metadata": map[string]any{"name": "streamrec-secrets"}, "stringData": map[string]any{"CASSANDRA_PASSWORD": "hunter2"}})
		return true
	}},
	{"topics.env value changed but not the ConfigMap", "deploy/topics.env says", func(in *Inputs) bool {
		in.TopicsEnv["SCHEMA_COMPATIBILITY"] = "FULL"
		return true
	}},
	{"a prod container without limits", "no resources.limits.memory", func(in *Inputs) bool {
		c := mainOf(in, "prod", "schema-registry")
		r, _ := get(c, "resources").(map[string]any)
		delete(r, "limits")
		return r != nil
	}},
	{"archiver schedule not ARCHIVE_AT", "ARCHIVE_AT", func(in *Inputs) bool {
		return each(in, "prod", "CronJob", func(o Obj) bool { return set(o, "0 3 * * *", "spec", "schedule") })
	}},
}

func runSelftest(base *Inputs) int {
	failed := 0
	for _, m := range mutations {
		in := base.clone()
		if !m.apply(in) {
			fmt.Printf("self-test: %-62s NOT APPLIED (the object to break is missing)\n", m.name)
			failed++
			continue
		}
		var hit string
		for _, p := range check(in) {
			if strings.Contains(p, m.want) {
				hit = p
				break
			}
		}
		if hit == "" {
			fmt.Printf("self-test: %-62s NOT CAUGHT (want a problem with %q)\n", m.name, m.want)
			failed++
			continue
		}
		fmt.Printf("self-test: caught %-55s -> %s\n", m.name, hit)
	}
	fmt.Printf("self-test: %d of %d broken copies caught\n", len(mutations)-failed, len(mutations))
	return failed
}

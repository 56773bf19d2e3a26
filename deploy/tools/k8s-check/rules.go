package main

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"
)

// The project's own services and the compose services whose counterparts run on Kubernetes as
// workloads labelled app.kubernetes.io/name=<compose service>.
var (
	appServices   = []string{"env-svc", "agent-svc", "agent-learner", "archiver"}
	longRunning   = []string{"env-svc", "agent-svc", "agent-learner"} // serve /metrics, /healthz, /readyz
	workloadOfSvc = []string{"env-svc", "agent-svc", "agent-learner", "archiver", "schema-registry", "init-schemas", "init-cassandra"}
	// Compose services replaced by an operator's resource or by a KafkaTopic, not by a workload.
	replacedBy = map[string]string{
		"zookeeper": "Kafka (Strimzi, spec.zookeeper)", "kafka-1": "Kafka (Strimzi)", "kafka-2": "Kafka (Strimzi)",
		"kafka-3": "Kafka (Strimzi)", "cassandra": "CassandraDatacenter (cass-operator)", "init-topics": "KafkaTopic (Strimzi)",
		"jmx-exporter": "Strimzi's built-in JMX exporter", "prometheus": "PodMonitor (Prometheus Operator)",
		"grafana": "the dashboards of deploy/grafana (docs/KUBERNETES.md)",
	}
	// Settings Kubernetes sets differently from compose on purpose; anything else shared must agree.
	deliberate = map[string]string{
		"AGENT_POLICY":   "the replicas serve the shared DQN",
		"AGENT_LEARNING": "the replicas serve the shared DQN",
		"CHECKPOINT_DIR": "the learner's volume",
		"RUST_LOG":       "quieter Cassandra driver logs",
	}
	addresses = map[string]bool{"KAFKA_BOOTSTRAP_SERVERS": true, "SCHEMA_REGISTRY_URL": true, "CASSANDRA_NODES": true}
	secretish = regexp.MustCompile(`(?i)(PASSWORD|SECRET|TOKEN|CREDENTIAL|_KEY)$`)
	// 'dc1': 3 in a NetworkTopologyStrategy map.
	replicationFactor = regexp.MustCompile(`'([^']+)'\s*:\s*'?(\d+)'?`)
)

// Report collects the broken rules of one run.
type Report struct{ problems []string }

func (r *Report) add(overlay, format string, args ...any) {
	prefix := ""
	if overlay != "" {
		prefix = overlay + ": "
	}
	r.problems = append(r.problems, prefix+fmt.Sprintf(format, args...))
}

func composeService(in *Inputs, svc string) map[string]any {
	m, _ := get(in.Compose, "services", svc).(map[string]any)
	return m
}

// composeEnv: a compose service's environment (map or list form), interpolated.
func composeEnv(in *Inputs, svc string) map[string]string {
	out := map[string]string{}
	switch e := get(composeService(in, svc), "environment").(type) {
	case map[string]any:
		for k, v := range e {
			out[k] = interpolate(fmt.Sprint(v), in.EnvExample)
		}
	case []any:
		for _, kv := range e {
			k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
			out[k] = interpolate(v, in.EnvExample)
		}
	}
	return out
}

func composeImage(in *Inputs, svc string) (string, string) {
	return splitImage(interpolate(str(composeService(in, svc), "image"), in.EnvExample))
}

// check runs every rule on every overlay.
func check(in *Inputs) []string {
	r := &Report{}
	checkSources(in, r)
	for _, ov := range in.OverlayOrder {
		checkOverlay(in, ov, in.Overlays[ov], r)
	}
	sort.Strings(r.problems)
	return r.problems
}

// checkSources: compose and the local stack against their own sources (images, ports).
func checkSources(in *Inputs, r *Report) {
	defaults := composeDefaults(in.Files["docker-compose.yml"])
	for _, v := range []string{"CP_VERSION", "CASSANDRA_VERSION", "STREAMREC_TAG"} {
		if defaults[v] != in.EnvExample[v] {
			r.add("compose", "image version %s: docker-compose.yml defaults to %q, .env.example says %q", v, defaults[v], in.EnvExample[v])
		}
	}
	if in.Stack["CASSANDRA_VERSION"] != in.EnvExample["CASSANDRA_VERSION"] {
		r.add("local stack", "CASSANDRA_VERSION %q in deploy/local/stack.sh, %q in .env.example", in.Stack["CASSANDRA_VERSION"], in.EnvExample["CASSANDRA_VERSION"])
	}
	for _, svc := range append(append([]string{}, workloadOfSvc...), keys(replacedBy)...) {
		if composeService(in, svc) == nil {
			r.add("compose", "service %s, which deploy/k8s mirrors, is missing from docker-compose.yml", svc)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func checkOverlay(in *Inputs, ov string, objs []Obj, r *Report) {
	prod := ov == "prod"
	kafka := firstOf(objs, "Kafka")
	if kafka == nil {
		r.add(ov, "no Kafka resource")
		return
	}
	cfg := configMap(objs, "streamrec-config")
	if cfg == nil {
		r.add(ov, "no ConfigMap streamrec-config")
		return
	}
	data := func(k string) string { return str(cfg, "data", k) }

	// --- topics: exactly those of create-topics.sh, same partitions and cleanup; RF and min ISR those
	// of topics.env, or the broker count where the overlay runs fewer brokers (dev).
	brokers, _ := num(kafka, "spec", "kafka", "replicas")
	want := map[string]Topic{}
	for _, t := range in.Topics {
		want[t.Name] = t
	}
	got := map[string]bool{}
	for _, kt := range ofKind(objs, "KafkaTopic") {
		tn := str(kt, "spec", "topicName")
		if tn == "" {
			tn = name(kt)
		}
		got[tn] = true
		t, ok := want[tn]
		if !ok {
			r.add(ov, "KafkaTopic %s: topic %s is not one create-topics.sh creates from deploy/topics.env", name(kt), tn)
			continue
		}
		if c := str(kt, "metadata", "labels", "strimzi.io/cluster"); c != name(kafka) {
			r.add(ov, "KafkaTopic %s: label strimzi.io/cluster=%q, the Kafka resource is %q", name(kt), c, name(kafka))
		}
		if p, _ := num(kt, "spec", "partitions"); p != t.Partitions {
			r.add(ov, "topic %s: %d partitions in the KafkaTopic, %d in deploy/topics.env (create-topics.sh)", tn, p, t.Partitions)
		}
		wantRF, wantISR := t.Replicas, t.MinISR
		if brokers < wantRF && !prod {
			wantRF, wantISR = brokers, min(t.MinISR, brokers)
		}
		if rf, _ := num(kt, "spec", "replicas"); rf != wantRF {
			r.add(ov, "topic %s: replication factor %d, want %d (topics.env %d, %d broker(s))", tn, rf, wantRF, t.Replicas, brokers)
		}
		if isr, _ := num(kt, "spec", "config", "min.insync.replicas"); isr != wantISR {
			r.add(ov, "topic %s: min.insync.replicas %d, want %d (topics.env %d)", tn, isr, wantISR, t.MinISR)
		}
		if c := str(kt, "spec", "config", "cleanup.policy"); c != t.Cleanup {
			r.add(ov, "topic %s: cleanup.policy %q, create-topics.sh uses %q", tn, c, t.Cleanup)
		}
	}
	for _, t := range in.Topics {
		if !got[t.Name] {
			r.add(ov, "topic %s (%s in deploy/topics.env) has no KafkaTopic", t.Name, t.Var)
		}
	}
	if prod && brokers < 3 {
		r.add(ov, "Kafka: %d broker(s); prod runs three (RF %s, min ISR %s)", brokers, in.TopicsEnv["TOPIC_REPLICATION_FACTOR"], in.TopicsEnv["TOPIC_MIN_ISR"])
	}
	if prod {
		for k, v := range map[string]string{"default.replication.factor": in.TopicsEnv["TOPIC_REPLICATION_FACTOR"], "min.insync.replicas": in.TopicsEnv["TOPIC_MIN_ISR"]} {
			if got := str(kafka, "spec", "kafka", "config", k); got != v {
				r.add(ov, "Kafka config %s=%s, deploy/topics.env says %s", k, got, v)
			}
		}
	}
	if get(kafka, "spec", "zookeeper") == nil {
		r.add(ov, "Kafka: no spec.zookeeper; the project runs ZooKeeper mode (Strimzi 0.45)")
	}

	// --- configuration: topics.env verbatim; shared settings as compose's services have them.
	for _, k := range in.TopicsEnvOrder {
		if v, ok := get(cfg, "data", k).(string); !ok || v != in.TopicsEnv[k] {
			r.add(ov, "ConfigMap streamrec-config: %s=%q, deploy/topics.env says %q", k, data(k), in.TopicsEnv[k])
		}
	}
	for _, svc := range appServices {
		for k, v := range composeEnv(in, svc) {
			cv, ok := get(cfg, "data", k).(string)
			if !ok || addresses[k] || deliberate[k] != "" {
				continue
			}
			if svc == "agent-svc" && k == "CHECKPOINT_DIR" {
				continue
			}
			if cv != v {
				r.add(ov, "setting %s: %q in streamrec-config, %q in compose service %s", k, cv, v, svc)
			}
		}
	}
	// The archive keyspace's replication (init-cassandra) names this datacenter, within its size.
	if repl, dc := data("ARCHIVER_REPLICATION"), firstOf(objs, "CassandraDatacenter"); repl != "" && dc != nil {
		dcName := str(dc, "spec", "datacenterName")
		if dcName == "" {
			dcName = name(dc)
		}
		size, _ := num(dc, "spec", "size")
		for _, m := range replicationFactor.FindAllStringSubmatch(repl, -1) {
			if rf := atoi(m[2]); m[1] != dcName || rf > size {
				r.add(ov, "ARCHIVER_REPLICATION %s: %d replicas in %q, the datacenter is %q with %d node(s)", repl, rf, m[1], dcName, size)
			}
		}
	}
	if ks := data("CASSANDRA_KEYSPACE"); ks != in.CQLKeyspace {
		r.add(ov, "CASSANDRA_KEYSPACE %q, archiver/schema.cql creates keyspace %q", ks, in.CQLKeyspace)
	}
	for _, w := range workloads(objs) {
		if !contains(append(append([]string{}, appServices...), "init-schemas", "init-cassandra"), w.App) {
			continue
		}
		for _, c := range containers(w.Pod, true) {
			if !envFromConfigMap(c, name(cfg)) {
				r.add(ov, "%s %s, container %s: does not read ConfigMap streamrec-config (envFrom)", w.Kind, w.Name, str(c, "name"))
			}
		}
	}

	// --- init Jobs: the repository's scripts, schemas and CQL, byte for byte.
	checkInitFiles(in, ov, objs, r)

	// --- images and versions.
	checkImages(in, ov, objs, kafka, r)

	// --- ports and addresses.
	checkPorts(in, ov, objs, kafka, cfg, r)

	// --- autoscaling and the learner.
	checkScaling(in, ov, objs, cfg, r)

	// --- secrets by reference only.
	for _, s := range ofKind(objs, "Secret") {
		if get(s, "data") != nil || get(s, "stringData") != nil {
			r.add(ov, "Secret %s carries values; secrets are referenced (secretRef, secretKeyRef), never committed", name(s))
		}
	}
	for _, w := range workloads(objs) {
		for _, c := range containers(w.Pod, true) {
			for _, e := range list(c, "env") {
				if secretish.MatchString(str(e, "name")) && get(e, "value") != nil {
					r.add(ov, "%s %s: env %s has a literal value; take it from a Secret (secretKeyRef)", w.Kind, w.Name, str(e, "name"))
				}
			}
		}
	}

	// --- shutdown: at least compose's grace period (a replica commits, the learner checkpoints).
	for _, svc := range appServices {
		w := workload(objs, svc)
		if w == nil {
			continue
		}
		want, err := time.ParseDuration(str(composeService(in, svc), "stop_grace_period"))
		if err != nil {
			continue
		}
		if g, _ := num(w.Pod, "terminationGracePeriodSeconds"); time.Duration(g)*time.Second < want {
			r.add(ov, "%s: terminationGracePeriodSeconds %d, shorter than compose's stop_grace_period %s", svc, g, want)
		}
	}

	// --- the archiver's schedule is compose's ARCHIVE_AT.
	if cj := find(objs, "CronJob", "archiver"); cj != nil {
		h, m, _ := strings.Cut(in.EnvExample["ARCHIVE_AT"], ":")
		want := fmt.Sprintf("%d %d * * *", atoi(m), atoi(h))
		if s := str(cj, "spec", "schedule"); s != want {
			r.add(ov, "CronJob archiver: schedule %q, ARCHIVE_AT=%s of .env.example means %q", s, in.EnvExample["ARCHIVE_AT"], want)
		}
	}

	if prod {
		checkProd(ov, objs, r)
	}
}

func atoi(s string) int {
	n, _ := num(map[string]any{"v": s}, "v")
	return n
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func firstOf(objs []Obj, k string) Obj {
	if l := ofKind(objs, k); len(l) > 0 {
		return l[0]
	}
	return nil
}

func envFromConfigMap(c map[string]any, cm string) bool {
	for _, e := range list(c, "envFrom") {
		if str(e, "configMapRef", "name") == cm {
			return true
		}
	}
	return false
}

func checkInitFiles(in *Inputs, ov string, objs []Obj, r *Report) {
	initCM, schemaCM := configMap(objs, "streamrec-init"), configMap(objs, "streamrec-schemas")
	if initCM == nil || schemaCM == nil {
		r.add(ov, "ConfigMaps streamrec-init and streamrec-schemas are required (init Jobs)")
		return
	}
	for key, file := range map[string]string{"register-schemas.sh": "deploy/init/register-schemas.sh", "topics.env": "deploy/topics.env", "schema.cql": "archiver/schema.cql"} {
		if v, ok := get(initCM, "data", key).(string); !ok || v != in.Files[file] {
			r.add(ov, "ConfigMap streamrec-init: %s differs from %s", key, file)
		}
	}
	wantKeys := map[string]bool{}
	for _, s := range in.Subjects {
		key := s.File[strings.LastIndex(s.File, "/")+1:]
		wantKeys[key] = true
		v, ok := get(schemaCM, "data", key).(string)
		switch {
		case !ok:
			r.add(ov, "subject %s: schema %s is missing from ConfigMap streamrec-schemas (base/kustomization.yaml)", s.Name, key)
		case v != in.Files[s.File]:
			r.add(ov, "subject %s: schema %s in ConfigMap streamrec-schemas differs from %s", s.Name, key, s.File)
		}
	}
	if d, ok := get(schemaCM, "data").(map[string]any); ok {
		for key := range d {
			if !wantKeys[key] {
				r.add(ov, "ConfigMap streamrec-schemas: %s is no subject register-schemas.sh registers", key)
			}
		}
	}
	if km := configMap(objs, "kafka-metrics"); km == nil || str(km, "data", "kafka-jmx.yaml") != in.Files["deploy/local/prometheus/kafka-jmx.yaml"] {
		r.add(ov, "ConfigMap kafka-metrics: kafka-jmx.yaml differs from deploy/local/prometheus/kafka-jmx.yaml (the dashboards' kafka_* names)")
	}
	// The Job reads the scripts where it mounts them.
	w := workload(objs, "init-schemas")
	if w == nil {
		r.add(ov, "no init-schemas Job")
		return
	}
	c := w.mainContainer()
	mounts := map[string]string{} // ConfigMap generator name -> mount path
	for _, v := range list(w.Pod, "volumes") {
		for _, m := range list(c, "volumeMounts") {
			if str(m, "name") == str(v, "name") && str(v, "configMap", "name") != "" {
				cm := str(v, "configMap", "name")
				mounts[regexp.MustCompile(`-[a-z0-9]{10}$`).ReplaceAllString(cm, "")] = str(m, "mountPath")
			}
		}
	}
	env := map[string]string{}
	for _, e := range list(c, "env") {
		env[str(e, "name")] = str(e, "value")
	}
	if env["SCHEMA_DIR"] != mounts["streamrec-schemas"] {
		r.add(ov, "init-schemas: SCHEMA_DIR=%q, ConfigMap streamrec-schemas is mounted at %q", env["SCHEMA_DIR"], mounts["streamrec-schemas"])
	}
	if env["TOPICS_ENV"] != mounts["streamrec-init"]+"/topics.env" {
		r.add(ov, "init-schemas: TOPICS_ENV=%q, ConfigMap streamrec-init is mounted at %q", env["TOPICS_ENV"], mounts["streamrec-init"])
	}
	if !strings.Contains(fmt.Sprint(get(c, "command")), mounts["streamrec-init"]+"/register-schemas.sh") {
		r.add(ov, "init-schemas: does not run %s/register-schemas.sh", mounts["streamrec-init"])
	}
}

func checkImages(in *Inputs, ov string, objs []Obj, kafka Obj, r *Report) {
	wantTag := in.EnvExample["STREAMREC_TAG"]
	source := "STREAMREC_TAG of .env.example"
	if ov == "prod" {
		wantTag, source = in.WorkspaceVersion, "the workspace version of Cargo.toml"
	}
	for _, svc := range workloadOfSvc {
		w := workload(objs, svc)
		if w == nil {
			r.add(ov, "compose service %s has no workload (app.kubernetes.io/name=%s)", svc, svc)
			continue
		}
		repo, tag := composeImage(in, svc)
		for _, c := range containers(w.Pod, true) {
			img, t := splitImage(str(c, "image"))
			if !sameRepository(img, repo) {
				r.add(ov, "%s, container %s: image %s, compose's %s runs %s", w.Name, str(c, "name"), img, svc, repo)
				continue
			}
			if strings.HasPrefix(repo, "streamrec/") {
				if t != wantTag {
					r.add(ov, "%s, container %s: image tag %q, want %q (%s)", w.Name, str(c, "name"), t, wantTag, source)
				}
			} else if t != tag {
				r.add(ov, "%s, container %s: %s:%s, compose runs %s:%s (.env.example)", w.Name, str(c, "name"), img, t, repo, tag)
			}
		}
		// The same subcommand as compose (the archiver's CronJob runs run-once instead of daily).
		if cmd := list(composeService(in, svc), "command"); len(cmd) > 0 && svc != "archiver" {
			args := list(w.mainContainer(), "args")
			if len(args) == 0 || fmt.Sprint(args[0]) != fmt.Sprint(cmd[0]) {
				r.add(ov, "%s: args %v, compose runs %v", svc, args, cmd)
			}
		}
	}
	// Engines: Kafka's line and Cassandra's version as compose and the local stack run them.
	kv := str(kafka, "spec", "kafka", "version")
	if stack := in.Stack["KAFKA_VERSION"]; majorMinor(kv) != majorMinor(stack) {
		r.add(ov, "Kafka version %s, the local stack runs %s (compose: Confluent Platform %s)", kv, stack, in.EnvExample["CP_VERSION"])
	}
	if dc := firstOf(objs, "CassandraDatacenter"); dc == nil {
		r.add(ov, "no CassandraDatacenter")
	} else if v := str(dc, "spec", "serverVersion"); v != in.EnvExample["CASSANDRA_VERSION"] {
		r.add(ov, "CassandraDatacenter %s: serverVersion %s, compose and the local stack run Cassandra %s", name(dc), v, in.EnvExample["CASSANDRA_VERSION"])
	}
}

func majorMinor(v string) string {
	p := strings.SplitN(v, ".", 3)
	if len(p) < 2 {
		return v
	}
	return p[0] + "." + p[1]
}

func checkPorts(in *Inputs, ov string, objs []Obj, kafka Obj, cfg Obj, r *Report) {
	data := func(k string) string { return str(cfg, "data", k) }
	// Metrics: compose's METRICS_ADDR port; containers, probes and the PodMonitor on it.
	_, metricsPort := hostPort(composeEnv(in, "agent-svc")["METRICS_ADDR"])
	if _, p := hostPort(data("METRICS_ADDR")); p != metricsPort {
		r.add(ov, "METRICS_ADDR %q: port %d, compose serves metrics on %d", data("METRICS_ADDR"), p, metricsPort)
	}
	for _, svc := range longRunning {
		w := workload(objs, svc)
		if w == nil {
			continue
		}
		c := w.mainContainer()
		if p, ok := containerPort(c, "metrics"); !ok || p != metricsPort {
			r.add(ov, "%s: container port `metrics` is %d, want %d (METRICS_ADDR)", svc, p, metricsPort)
		}
		for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
			got := str(c, probe, "httpGet", "path")
			port, _ := containerPort(c, get(c, probe, "httpGet", "port"))
			if got != path || port != metricsPort {
				r.add(ov, "%s: %s is GET %s on port %d, want GET %s on %d", svc, probe, got, port, path, metricsPort)
			}
		}
	}
	if pm := find(objs, "PodMonitor", "streamrec"); pm == nil {
		r.add(ov, "no PodMonitor streamrec for the services' /metrics")
	} else {
		sel := fmt.Sprint(get(pm, "spec", "selector"))
		for _, svc := range longRunning {
			if !strings.Contains(sel, svc) {
				r.add(ov, "PodMonitor streamrec does not select %s", svc)
			}
		}
		for _, ep := range list(pm, "spec", "podMetricsEndpoints") {
			if str(ep, "port") != "metrics" || str(ep, "path") != "/metrics" {
				r.add(ov, "PodMonitor streamrec scrapes port %q path %q, want `metrics` /metrics", str(ep, "port"), str(ep, "path"))
			}
		}
	}

	// Kafka: the plain listener on the brokers' port of compose and the local stack.
	listener := 0
	for _, l := range list(kafka, "spec", "kafka", "listeners") {
		if str(l, "name") == "plain" {
			listener, _ = num(l, "port")
		}
	}
	composeKafka := 0
	for _, p := range list(composeService(in, "kafka-1"), "ports") {
		f := strings.Split(fmt.Sprint(p), ":")
		composeKafka = atoi(f[len(f)-1])
	}
	stackKafka := atoi(strings.Fields(in.Stack["KAFKA_PORTS"] + " 0")[0])
	if listener != composeKafka || listener != stackKafka {
		r.add(ov, "Kafka listener `plain` on port %d; compose's brokers listen on %d, the local stack's on %d", listener, composeKafka, stackKafka)
	}
	bootstrap := fmt.Sprintf("%s-kafka-bootstrap:%d", name(kafka), listener)
	if data("KAFKA_BOOTSTRAP_SERVERS") != bootstrap {
		r.add(ov, "KAFKA_BOOTSTRAP_SERVERS %q, the Kafka resource's bootstrap service is %s", data("KAFKA_BOOTSTRAP_SERVERS"), bootstrap)
	}

	// Registry: Service, container and URL on compose's and the local stack's port.
	regHost, regPort := hostPort(data("SCHEMA_REGISTRY_URL"))
	composeReg := atoi(fmt.Sprint(lastPortOf(composeService(in, "schema-registry"))))
	svc := find(objs, "Service", regHost)
	if svc == nil {
		r.add(ov, "SCHEMA_REGISTRY_URL %q: no Service %s", data("SCHEMA_REGISTRY_URL"), regHost)
	} else {
		sp, _ := num(list(svc, "spec", "ports")[0], "port")
		if sp != regPort || sp != composeReg || fmt.Sprint(sp) != in.Stack["REGISTRY_PORT"] {
			r.add(ov, "registry port: Service %s %d, SCHEMA_REGISTRY_URL %d, compose %d, local stack %s", regHost, sp, regPort, composeReg, in.Stack["REGISTRY_PORT"])
		}
	}
	if w := workload(objs, "schema-registry"); w != nil {
		c := w.mainContainer()
		env := map[string]string{}
		for _, e := range list(c, "env") {
			env[str(e, "name")] = str(e, "value")
		}
		if _, p := hostPort(env["SCHEMA_REGISTRY_LISTENERS"]); p != composeReg {
			r.add(ov, "schema-registry listens on %d, compose's on %d", p, composeReg)
		}
		if cp, _ := containerPort(c, "http"); cp != composeReg {
			r.add(ov, "schema-registry: container port `http` %d, want %d", cp, composeReg)
		}
		if !strings.Contains(env["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"], bootstrap) {
			r.add(ov, "schema-registry: SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS %q, want %s", env["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"], bootstrap)
		}
	}

	// Cassandra: cass-operator's datacenter service on the native port of compose and the local stack.
	if dc := firstOf(objs, "CassandraDatacenter"); dc != nil {
		want := fmt.Sprintf("%s-%s-service:%s", strings.ToLower(str(dc, "spec", "clusterName")), name(dc), in.Stack["CASSANDRA_PORT"])
		if data("CASSANDRA_NODES") != want || fmt.Sprint(lastPortOf(composeService(in, "cassandra"))) != in.Stack["CASSANDRA_PORT"] {
			r.add(ov, "CASSANDRA_NODES %q, want %s (compose's Cassandra port %v)", data("CASSANDRA_NODES"), want, lastPortOf(composeService(in, "cassandra")))
		}
	}

	// NetworkPolicies may open only these ports.
	known := map[int]string{listener: "Kafka", regPort: "registry", atoi(in.Stack["CASSANDRA_PORT"]): "Cassandra", metricsPort: "metrics",
		53: "DNS", 7000: "Cassandra internode", 7001: "Cassandra internode TLS", 8080: "cass-operator management API", 9000: "Cassandra metrics"}
	for _, np := range ofKind(objs, "NetworkPolicy") {
		for _, dir := range []string{"ingress", "egress"} {
			for _, rule := range list(np, "spec", dir) {
				for _, p := range list(rule, "ports") {
					if n, _ := num(p, "port"); known[n] == "" {
						r.add(ov, "NetworkPolicy %s: %s port %d is no port of the stack", name(np), dir, n)
					}
				}
			}
		}
	}
}

func lastPortOf(svc map[string]any) string {
	ports := list(svc, "ports")
	if len(ports) == 0 {
		return "0"
	}
	f := strings.Split(fmt.Sprint(ports[0]), ":")
	return f[len(f)-1]
}

func checkScaling(in *Inputs, ov string, objs []Obj, cfg Obj, r *Report) {
	group := str(cfg, "data", "AGENT_GROUP_ID")
	if group == "" {
		group = in.CodeDefaults["AGENT_GROUP_ID"]
	}
	state := in.TopicsEnv["STATE_TOPIC"]
	partitions := 0
	for _, t := range in.Topics {
		if t.Name == state {
			partitions = t.Partitions
		}
	}
	so := find(objs, "ScaledObject", "agent-svc")
	if so == nil {
		r.add(ov, "no ScaledObject agent-svc")
	} else {
		if t := str(so, "spec", "scaleTargetRef", "name"); find(objs, "Deployment", t) == nil || t != "agent-svc" {
			r.add(ov, "ScaledObject agent-svc scales %q, not the agent-svc Deployment", t)
		}
		if m, _ := num(so, "spec", "maxReplicaCount"); m != partitions {
			r.add(ov, "ScaledObject agent-svc: maxReplicaCount %d, the state topic %s has %d partitions (topics.env)", m, state, partitions)
		}
		kafkaTriggers := 0
		for _, tr := range list(so, "spec", "triggers") {
			if str(tr, "type") != "kafka" {
				continue
			}
			kafkaTriggers++
			if t := str(tr, "metadata", "topic"); t != state {
				r.add(ov, "ScaledObject agent-svc: lag of topic %q, the replicas read %s", t, state)
			}
			if g := str(tr, "metadata", "consumerGroup"); g != group {
				r.add(ov, "ScaledObject agent-svc: lag of group %q, the replicas' group is %q", g, group)
			}
			// KEDA's operator runs in its own namespace: a short service name would not resolve there.
			host, port := hostPort(str(cfg, "data", "KAFKA_BOOTSTRAP_SERVERS"))
			want := fmt.Sprintf("%s.%s.svc:%d", host, str(firstOf(objs, "Kafka"), "metadata", "namespace"), port)
			if b := str(tr, "metadata", "bootstrapServers"); b != want {
				r.add(ov, "ScaledObject agent-svc: bootstrapServers %q, want %s (the services' brokers, qualified with the Kafka's namespace for KEDA)", b, want)
			}
		}
		if kafkaTriggers != 1 {
			r.add(ov, "ScaledObject agent-svc: %d kafka triggers, want 1", kafkaTriggers)
		}
	}
	if d := find(objs, "Deployment", "agent-svc"); d != nil && get(d, "spec", "replicas") != nil {
		r.add(ov, "Deployment agent-svc sets spec.replicas; KEDA owns the count (each apply would reset it)")
	}
	learner := workload(objs, "agent-learner")
	if learner == nil {
		r.add(ov, "no agent-learner workload")
		return
	}
	if n, ok := num(learner.Obj, "spec", "replicas"); !ok || n != 1 {
		r.add(ov, "agent-learner: %d replicas; there is exactly one learner", n)
	}
	lg := str(cfg, "data", "AGENT_LEARNER_GROUP_ID")
	if lg == "" {
		lg = in.CodeDefaults["AGENT_LEARNER_GROUP_ID"]
	}
	if lg == group {
		r.add(ov, "agent-learner's group %q is the replicas' group", lg)
	}
	dir := str(cfg, "data", "CHECKPOINT_DIR")
	mounted := false
	for _, m := range list(learner.mainContainer(), "volumeMounts") {
		if mp := str(m, "mountPath"); dir != "" && strings.HasPrefix(dir+"/", strings.TrimSuffix(mp, "/")+"/") && str(m, "name") != "tmp" {
			mounted = true
		}
	}
	if !mounted {
		r.add(ov, "agent-learner: CHECKPOINT_DIR %q is on no volume", dir)
	}
}

// checkProd: what the prod overlay promises besides consistency.
func checkProd(ov string, objs []Obj, r *Report) {
	for _, w := range workloads(objs) {
		for _, c := range containers(w.Pod, true) {
			for _, f := range [][]string{{"requests", "cpu"}, {"requests", "memory"}, {"limits", "memory"}} {
				if str(c, "resources", f[0], f[1]) == "" {
					r.add(ov, "%s %s, container %s: no resources.%s.%s", w.Kind, w.Name, str(c, "name"), f[0], f[1])
				}
			}
		}
		if contains(workloadOfSvc, w.App) && !selectedByNetworkPolicy(objs, w) {
			r.add(ov, "%s %s: no NetworkPolicy selects its pods", w.Kind, w.Name)
		}
	}
	for _, app := range []string{"agent-svc", "schema-registry"} {
		found := false
		for _, pdb := range ofKind(objs, "PodDisruptionBudget") {
			if str(pdb, "spec", "selector", "matchLabels", "app.kubernetes.io/name") == app {
				found = true
			}
		}
		if !found {
			r.add(ov, "no PodDisruptionBudget for %s", app)
		}
		if w := workload(objs, app); w != nil && get(w.Pod, "affinity", "podAntiAffinity") == nil {
			r.add(ov, "%s: no pod anti-affinity", app)
		}
	}
	if k := firstOf(objs, "Kafka"); k != nil {
		for _, part := range []string{"kafka", "zookeeper"} {
			if get(k, "spec", part, "template", "pod", "affinity", "podAntiAffinity") == nil {
				r.add(ov, "Kafka %s: no pod anti-affinity", part)
			}
		}
	}
}

func selectedByNetworkPolicy(objs []Obj, w Workload) bool {
	for _, np := range ofKind(objs, "NetworkPolicy") {
		if str(np, "spec", "podSelector", "matchLabels", "app.kubernetes.io/name") == w.App {
			return true
		}
	}
	return false
}

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Obj is one Kubernetes object of a rendered overlay, as decoded YAML.
type Obj = map[string]any

// Topic is one topic as deploy/init/create-topics.sh creates it.
type Topic struct {
	Var, Name                    string
	Partitions, Replicas, MinISR int
	Cleanup                      string
}

// Subject is one value subject deploy/init/register-schemas.sh registers, and its schema file.
type Subject struct{ Name, File string }

// Inputs: everything the rules compare, read once from the repository and the rendered overlays.
// The self-test mutates a copy of it.
type Inputs struct {
	TopicsEnv        map[string]string
	TopicsEnvOrder   []string
	Topics           []Topic
	Subjects         []Subject
	Files            map[string]string // repository-relative path -> content (schemas, init scripts, schema.cql)
	Compose          map[string]any    // docker-compose.yml, decoded
	EnvExample       map[string]string // .env.example
	Stack            map[string]string // deploy/local/stack.sh: VERSION and port defaults
	WorkspaceVersion string            // Cargo.toml [workspace.package] version
	CodeDefaults     map[string]string // clap defaults read from the Rust sources (group ids)
	CQLKeyspace      string            // the keyspace archiver/schema.cql creates
	Overlays         map[string][]Obj  // overlay name -> rendered objects
	OverlayOrder     []string
}

func (in *Inputs) clone() *Inputs {
	var out Inputs
	b, err := json.Marshal(in)
	if err != nil {
		panic(err)
	}
	if err := json.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return &out
}

func readFile(root, rel string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		return "", fmt.Errorf("failed to read %s: %w", rel, err)
	}
	return string(b), nil
}

// parseEnvFile reads KEY=VALUE lines (comments and blank lines skipped), as sh and compose do for
// the project's plain files.
func parseEnvFile(text string) (map[string]string, []string) {
	vals, order := map[string]string{}, []string{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if _, seen := vals[k]; !seen {
			order = append(order, k)
		}
		vals[k] = v
	}
	return vals, order
}

// runScript runs one of deploy/init's scripts with sh (as compose and the local stack do).
func runScript(root string, env []string, args ...string) (string, error) {
	cmd := exec.Command("sh", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("sh %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// loadTopics runs create-topics.sh with `echo` in place of kafka-topics: each topic it would create
// prints its kafka-topics arguments.
func loadTopics(root string, env map[string]string) ([]Topic, error) {
	out, err := runScript(root, []string{"KAFKA_TOPICS_CMD=echo", "TOPIC_PARTITIONS=", "TOPICS_ENV=" + filepath.Join(root, "deploy/topics.env")},
		"deploy/init/create-topics.sh")
	if err != nil {
		return nil, err
	}
	varOf := map[string]string{}
	for k, v := range env {
		if strings.HasSuffix(k, "_TOPIC") {
			varOf[v] = k
		}
	}
	var topics []Topic
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "--bootstrap-server") {
			continue
		}
		f := strings.Fields(line)
		t := Topic{}
		for i := 0; i+1 < len(f); i++ {
			switch f[i] {
			case "--topic":
				t.Name = f[i+1]
			case "--partitions":
				t.Partitions, _ = strconv.Atoi(f[i+1])
			case "--replication-factor":
				t.Replicas, _ = strconv.Atoi(f[i+1])
			case "--config":
				k, v, _ := strings.Cut(f[i+1], "=")
				switch k {
				case "min.insync.replicas":
					t.MinISR, _ = strconv.Atoi(v)
				case "cleanup.policy":
					t.Cleanup = v
				}
			}
		}
		t.Var = varOf[t.Name]
		topics = append(topics, t)
	}
	if len(topics) == 0 {
		return nil, errors.New("create-topics.sh listed no topic")
	}
	return topics, nil
}

func loadSubjects(root string) ([]Subject, error) {
	out, err := runScript(root, []string{"SCHEMA_DIR=protocol/schemas", "TOPICS_ENV=" + filepath.Join(root, "deploy/topics.env")},
		"deploy/init/register-schemas.sh", "--list")
	if err != nil {
		return nil, err
	}
	var subjects []Subject
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			subjects = append(subjects, Subject{Name: f[0], File: f[1]})
		}
	}
	if len(subjects) == 0 {
		return nil, errors.New("register-schemas.sh --list listed no subject")
	}
	return subjects, nil
}

// decodeAll reads every YAML document of a rendered overlay.
func decodeAll(text string) ([]Obj, error) {
	dec := yaml.NewDecoder(strings.NewReader(text))
	var objs []Obj
	for {
		var o Obj
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if o != nil {
			objs = append(objs, o)
		}
	}
	return objs, nil
}

var (
	stackVar    = regexp.MustCompile(`(?m)^([A-Z_]+_VERSION)=(\S+)`)
	stackPort   = regexp.MustCompile(`(?m)^([A-Z_]+_PORTS?)=\$\{STACK_[A-Z_]+:-([0-9 ]+)\}`)
	stackPorts  = regexp.MustCompile(`(?m)read -r -a ([A-Z_]+) <<< "\$\{STACK_[A-Z_]+:-([0-9 ]+)\}"`)
	wsVersion   = regexp.MustCompile(`(?s)\[workspace\.package\].*?\nversion = "([^"]+)"`)
	cqlKeyspace = regexp.MustCompile(`(?i)CREATE KEYSPACE IF NOT EXISTS (\w+)`)
)

// clapDefault finds `env = "NAME", default_value = "X"` in a Rust source file.
func clapDefault(src, env string) string {
	re := regexp.MustCompile(`env = "` + regexp.QuoteMeta(env) + `", default_value = "([^"]*)"`)
	if m := re.FindStringSubmatch(src); m != nil {
		return m[1]
	}
	return ""
}

func load(root string, overlays []string) (*Inputs, error) {
	in := &Inputs{Files: map[string]string{}, Stack: map[string]string{}, CodeDefaults: map[string]string{}, Overlays: map[string][]Obj{}}
	text, err := readFile(root, "deploy/topics.env")
	if err != nil {
		return nil, err
	}
	in.TopicsEnv, in.TopicsEnvOrder = parseEnvFile(text)
	if in.Topics, err = loadTopics(root, in.TopicsEnv); err != nil {
		return nil, err
	}
	if in.Subjects, err = loadSubjects(root); err != nil {
		return nil, err
	}
	for _, s := range in.Subjects {
		if in.Files[s.File], err = readFile(root, s.File); err != nil {
			return nil, err
		}
	}
	for _, f := range []string{"deploy/init/register-schemas.sh", "deploy/topics.env", "archiver/schema.cql", "deploy/local/prometheus/kafka-jmx.yaml"} {
		if in.Files[f], err = readFile(root, f); err != nil {
			return nil, err
		}
	}
	if text, err = readFile(root, "docker-compose.yml"); err != nil {
		return nil, err
	}
	in.Files["docker-compose.yml"] = text
	if err := yaml.Unmarshal([]byte(text), &in.Compose); err != nil {
		return nil, fmt.Errorf("docker-compose.yml: %w", err)
	}
	if text, err = readFile(root, ".env.example"); err != nil {
		return nil, err
	}
	in.EnvExample, _ = parseEnvFile(text)
	if text, err = readFile(root, "deploy/local/stack.sh"); err != nil {
		return nil, err
	}
	for _, m := range stackVar.FindAllStringSubmatch(text, -1) {
		in.Stack[m[1]] = m[2]
	}
	for _, m := range append(stackPort.FindAllStringSubmatch(text, -1), stackPorts.FindAllStringSubmatch(text, -1)...) {
		in.Stack[m[1]] = m[2]
	}
	if text, err = readFile(root, "Cargo.toml"); err != nil {
		return nil, err
	}
	if m := wsVersion.FindStringSubmatch(text); m != nil {
		in.WorkspaceVersion = m[1]
	}
	for file, envs := range map[string][]string{
		"agent-svc/src/lib.rs":       {"AGENT_GROUP_ID"},
		"agent-svc/src/learn/mod.rs": {"AGENT_LEARNER_GROUP_ID"},
		"archiver/src/config.rs":     {"CASSANDRA_KEYSPACE", "ARCHIVER_GROUP_ID"},
	} {
		if text, err = readFile(root, file); err != nil {
			return nil, err
		}
		for _, e := range envs {
			if in.CodeDefaults[e] = clapDefault(text, e); in.CodeDefaults[e] == "" {
				return nil, fmt.Errorf("%s: no clap default for %s", file, e)
			}
		}
	}
	if m := cqlKeyspace.FindStringSubmatch(in.Files["archiver/schema.cql"]); m != nil {
		in.CQLKeyspace = m[1]
	}
	for _, spec := range overlays {
		name, path, ok := strings.Cut(spec, "=")
		if !ok {
			return nil, fmt.Errorf("-overlay %q: want NAME=RENDERED.yaml", spec)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		objs, err := decodeAll(string(b))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		in.Overlays[name] = objs
		in.OverlayOrder = append(in.OverlayOrder, name)
	}
	sort.Strings(in.OverlayOrder)
	return in, nil
}

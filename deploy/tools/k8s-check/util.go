package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// get walks nested maps; nil when a key is missing or a value is not a map.
func get(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func str(v any, path ...string) string {
	switch x := get(v, path...).(type) {
	case string:
		return x
	case nil:
		return ""
	default:
		return fmt.Sprint(x)
	}
}

// num reads an integer that YAML or a JSON round trip may give as int or float64 (or a digit string).
func num(v any, path ...string) (int, bool) {
	switch x := get(v, path...).(type) {
	case int:
		return x, true
	case int64:
		return int(x), true
	case float64:
		return int(x), true
	case string:
		n, err := strconv.Atoi(x)
		return n, err == nil
	}
	return 0, false
}

func list(v any, path ...string) []any {
	l, _ := get(v, path...).([]any)
	return l
}

func kind(o Obj) string { return str(o, "kind") }
func name(o Obj) string { return str(o, "metadata", "name") }

func ofKind(objs []Obj, k string) []Obj {
	var out []Obj
	for _, o := range objs {
		if kind(o) == k {
			out = append(out, o)
		}
	}
	return out
}

func find(objs []Obj, k, n string) Obj {
	for _, o := range objs {
		if kind(o) == k && name(o) == n {
			return o
		}
	}
	return nil
}

// configMap finds a ConfigMap by its generator name (kustomize appends -<hash>).
func configMap(objs []Obj, base string) Obj {
	hashed := regexp.MustCompile("^" + regexp.QuoteMeta(base) + "(-[a-z0-9]{10})?$")
	for _, o := range ofKind(objs, "ConfigMap") {
		if hashed.MatchString(name(o)) {
			return o
		}
	}
	return nil
}

// Workload is one pod template of a rendered overlay.
type Workload struct {
	Kind, Name, App string // App: the pod's app.kubernetes.io/name, i.e. its compose service
	Pod             map[string]any
	Obj             Obj
}

func workloads(objs []Obj) []Workload {
	var out []Workload
	for _, o := range objs {
		var tmpl any
		switch kind(o) {
		case "Deployment", "StatefulSet", "Job", "DaemonSet":
			tmpl = get(o, "spec", "template")
		case "CronJob":
			tmpl = get(o, "spec", "jobTemplate", "spec", "template")
		default:
			continue
		}
		pod, _ := get(tmpl, "spec").(map[string]any)
		out = append(out, Workload{Kind: kind(o), Name: name(o), App: str(tmpl, "metadata", "labels", "app.kubernetes.io/name"), Pod: pod, Obj: o})
	}
	return out
}

func workload(objs []Obj, app string) *Workload {
	for _, w := range workloads(objs) {
		if w.App == app {
			return &w
		}
	}
	return nil
}

func containers(pod map[string]any, withInit bool) []map[string]any {
	var out []map[string]any
	keys := []string{"containers"}
	if withInit {
		keys = append(keys, "initContainers")
	}
	for _, k := range keys {
		for _, c := range list(pod, k) {
			if m, ok := c.(map[string]any); ok {
				out = append(out, m)
			}
		}
	}
	return out
}

// mainContainer: the container named like the workload's app, else the first.
func (w *Workload) mainContainer() map[string]any {
	cs := containers(w.Pod, false)
	for _, c := range cs {
		if str(c, "name") == w.App {
			return c
		}
	}
	if len(cs) > 0 {
		return cs[0]
	}
	return nil
}

// containerPort resolves a probe's or monitor's port (number or name) against a container.
func containerPort(c map[string]any, port any) (int, bool) {
	if n, ok := num(map[string]any{"p": port}, "p"); ok {
		return n, true
	}
	for _, p := range list(c, "ports") {
		if str(p, "name") == fmt.Sprint(port) {
			return num(p, "containerPort")
		}
	}
	return 0, false
}

// splitImage: "registry/path/name:tag" -> ("registry/path/name", "tag").
func splitImage(image string) (string, string) {
	i := strings.LastIndex(image, ":")
	if i < 0 || strings.Contains(image[i:], "/") {
		return image, ""
	}
	return image[:i], image[i+1:]
}

// sameRepository: a k8s image may carry a registry prefix in front of compose's name.
func sameRepository(k8s, compose string) bool {
	return k8s == compose || strings.HasSuffix(k8s, "/"+compose)
}

func hostPort(addr string) (string, int) {
	addr = strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "PLAINTEXT://")
	addr = strings.TrimSuffix(addr, "/")
	h, p, ok := strings.Cut(addr, ":")
	if !ok {
		return h, 0
	}
	n, _ := strconv.Atoi(p)
	return h, n
}

var composeVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:?-([^}]*))?\}`)

// interpolate resolves ${VAR:-default} as docker compose would with .env.example as .env.
func interpolate(s string, env map[string]string) string {
	return composeVar.ReplaceAllStringFunc(s, func(m string) string {
		g := composeVar.FindStringSubmatch(m)
		if v := env[g[1]]; v != "" {
			return v
		}
		return g[3]
	})
}

// composeDefaults: the ${VAR:-default} pairs of the compose file (first default per variable).
func composeDefaults(text string) map[string]string {
	out := map[string]string{}
	for _, g := range composeVar.FindAllStringSubmatch(text, -1) {
		if _, ok := out[g[1]]; !ok && g[2] != "" {
			out[g[1]] = g[3]
		}
	}
	return out
}

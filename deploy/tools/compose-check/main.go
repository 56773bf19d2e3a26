// compose-check loads docker-compose.yml the way `docker compose` does (compose-go v2, the library it is
// built on: compose-spec schema validation, interpolation, path resolution, env_file reading), without a
// Docker engine, and adds the project's own rules. It prints one line per service and exits non-zero on the
// first invalid file or on any broken rule.
//
//	compose-check [-f docker-compose.yml] [-env-example .env.example]
//
// Run it from the repository root (deploy/tools/compose-check.sh does). Interpolation uses .env when present,
// otherwise .env.example; variables exported in the shell win, as with docker compose.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/types"
)

// appServices are the project's own long-running services: they have no healthcheck of their own.
var appServices = []string{"env-svc", "agent-svc", "agent-learner", "archiver"}

func main() {
	file := flag.String("f", "docker-compose.yml", "compose file")
	envExample := flag.String("env-example", ".env.example", "file that must document every interpolated variable, relative to the compose file (empty: skip)")
	flag.Parse()

	if err := run(*file, *envExample); err != nil {
		fmt.Fprintln(os.Stderr, "compose-check:", err)
		os.Exit(1)
	}
}

func run(file, envExample string) error {
	dir := filepath.Dir(file)
	envFile := filepath.Join(dir, ".env")
	if _, err := os.Stat(envFile); err != nil {
		envFile = filepath.Join(dir, ".env.example")
	}

	opts, err := cli.NewProjectOptions([]string{file},
		cli.WithWorkingDirectory(dir),
		cli.WithOsEnv,
		cli.WithEnvFiles(envFile),
		cli.WithDotEnv,
		cli.WithProfiles([]string{"*"}), // every profile: the tools services get checked too
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return fmt.Errorf("failed to prepare options: %w", err)
	}
	// Schema validation and the consistency check are on by default (loader.Options); they stay on.
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return err
	}

	fmt.Printf("project %s: %d services, env file %s\n", project.Name, len(project.Services), rel(dir, envFile))
	for _, name := range sortedNames(project.Services) {
		fmt.Println(describe(project, project.Services[name]))
	}

	problems := rules(project)
	if envExample != "" {
		if !filepath.IsAbs(envExample) {
			envExample = filepath.Join(dir, envExample)
		}
		problems = append(problems, undocumentedVariables(file, envExample)...)
	}
	for _, w := range warnings(project) {
		fmt.Println("warning:", w)
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "rule broken:", p)
		}
		return fmt.Errorf("%d rule(s) broken in %s", len(problems), file)
	}
	fmt.Println("ok")
	return nil
}

func describe(p *types.Project, s types.ServiceConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s", s.Name)
	if s.Build != nil {
		fmt.Fprintf(&b, " build=%s", rel(p.WorkingDir, filepath.Join(s.Build.Context, s.Build.Dockerfile)))
	}
	if s.Image != "" {
		fmt.Fprintf(&b, " image=%s", s.Image)
	}
	if len(s.Profiles) > 0 {
		fmt.Fprintf(&b, " profiles=%s", strings.Join(s.Profiles, ","))
	}
	switch {
	case isInitJob(p, s.Name):
		b.WriteString(" [init job]")
	case hasHealthcheck(s):
		b.WriteString(" [healthcheck]")
	}
	return b.String()
}

// isInitJob: some service waits for it with service_completed_successfully, i.e. it is meant to exit.
func isInitJob(p *types.Project, name string) bool {
	for _, s := range p.Services {
		if dep, ok := s.DependsOn[name]; ok && dep.Condition == types.ServiceConditionCompletedSuccessfully {
			return true
		}
	}
	return false
}

func hasHealthcheck(s types.ServiceConfig) bool {
	return s.HealthCheck != nil && !s.HealthCheck.Disable && len(s.HealthCheck.Test) > 0
}

func rules(p *types.Project) []string {
	var out []string
	for _, name := range sortedNames(p.Services) {
		s := p.Services[name]
		// Long-running infrastructure must report health so that dependents can wait for it.
		if len(s.Profiles) == 0 && !isInitJob(p, name) && !hasHealthcheck(s) && !slices.Contains(appServices, name) {
			out = append(out, fmt.Sprintf("service %s: long-running infrastructure without a healthcheck", name))
		}
		// Every service waits for health or completion, never just for a started container.
		for _, depName := range sortedNames(s.DependsOn) {
			dep := s.DependsOn[depName]
			switch dep.Condition {
			case types.ServiceConditionHealthy:
				if target, ok := p.Services[depName]; ok && !hasHealthcheck(target) {
					out = append(out, fmt.Sprintf("service %s: waits for %s to be healthy, but %s has no healthcheck", name, depName, depName))
				}
			case types.ServiceConditionCompletedSuccessfully:
			default:
				out = append(out, fmt.Sprintf("service %s: depends_on %s needs condition service_healthy or service_completed_successfully, has %q", name, depName, dep.Condition))
			}
		}
	}
	// agent-svc is scaled with --scale: a fixed container name or host port would collide.
	if s, ok := p.Services["agent-svc"]; !ok {
		out = append(out, "service agent-svc is missing")
	} else {
		if s.ContainerName != "" {
			out = append(out, "service agent-svc: container_name prevents --scale")
		}
		for _, port := range s.Ports {
			if port.Published != "" {
				out = append(out, fmt.Sprintf("service agent-svc: published port %s prevents --scale", port.Published))
			}
		}
	}
	// The Dockerfiles must exist (the loader does not look at them).
	for _, name := range sortedNames(p.Services) {
		s := p.Services[name]
		if s.Build == nil || s.Build.Dockerfile == "" {
			continue
		}
		df := s.Build.Dockerfile
		if !filepath.IsAbs(df) {
			df = filepath.Join(s.Build.Context, df)
		}
		if _, err := os.Stat(df); err != nil {
			out = append(out, fmt.Sprintf("service %s: dockerfile %s not found", name, rel(p.WorkingDir, df)))
		}
	}
	return out
}

// warnings: bind-mount sources that do not exist yet (Docker would create an empty directory in their place).
func warnings(p *types.Project) []string {
	var out []string
	for _, name := range sortedNames(p.Services) {
		for _, v := range p.Services[name].Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				out = append(out, fmt.Sprintf("service %s: bind source %s does not exist", name, rel(p.WorkingDir, v.Source)))
			}
		}
	}
	return out
}

// varRef matches ${NAME...} not preceded by a `$` escape.
var varRef = regexp.MustCompile(`(^|[^$])\$\{([A-Za-z_][A-Za-z0-9_]*)`)

// undocumentedVariables: every variable the compose file interpolates must be listed in the example env file.
func undocumentedVariables(file, envExample string) []string {
	raw, err := os.ReadFile(file)
	if err != nil {
		return []string{err.Error()}
	}
	documented, err := dotenv.Read(envExample)
	if err != nil {
		return []string{fmt.Sprintf("failed to read %s: %v", envExample, err)}
	}
	seen := map[string]bool{}
	var out []string
	for _, m := range varRef.FindAllStringSubmatch(string(raw), -1) {
		name := m[2]
		if seen[name] {
			continue
		}
		seen[name] = true
		if _, ok := documented[name]; !ok {
			out = append(out, fmt.Sprintf("variable %s is interpolated but not listed in %s", name, envExample))
		}
	}
	return out
}

func sortedNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

func rel(base, path string) string {
	if r, err := filepath.Rel(base, path); err == nil {
		return r
	}
	return path
}

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// writePodTemplates writes every workload's pod template of every overlay as a Pod, for a second
// dry run: the API server validates a StatefulSet's template only in part (its volume mounts may
// name volumeClaimTemplates), so a bad probe or port in the learner's StatefulSet would pass unseen.
// As a Pod, the template gets the full validation. A StatefulSet's claims become the PVC volumes
// its controller would give pod 0. Returns the number of Pods written per overlay.
func writePodTemplates(in *Inputs, dir string) (map[string]int, error) {
	counts := map[string]int{}
	for _, ov := range in.OverlayOrder {
		out := filepath.Join(dir, ov)
		if err := os.MkdirAll(out, 0o755); err != nil {
			return nil, err
		}
		for _, w := range workloads(in.Overlays[ov]) {
			spec := map[string]any{}
			for k, v := range w.Pod {
				spec[k] = v
			}
			if w.Kind == "StatefulSet" {
				vols := append([]any{}, list(spec, "volumes")...)
				for _, vct := range list(w.Obj, "spec", "volumeClaimTemplates") {
					claim := fmt.Sprintf("%s-%s-0", str(vct, "metadata", "name"), w.Name)
					vols = append(vols, map[string]any{"name": str(vct, "metadata", "name"), "persistentVolumeClaim": map[string]any{"claimName": claim}})
				}
				spec["volumes"] = vols
			}
			tmpl := get(w.Obj, "spec", "template")
			if w.Kind == "CronJob" {
				tmpl = get(w.Obj, "spec", "jobTemplate", "spec", "template")
			}
			meta := map[string]any{"name": strings.ToLower(w.Kind) + "-" + w.Name + "-template"}
			if ns := str(w.Obj, "metadata", "namespace"); ns != "" {
				meta["namespace"] = ns
			}
			if l := get(tmpl, "metadata", "labels"); l != nil {
				meta["labels"] = l
			}
			pod := map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
			b, err := yaml.Marshal(pod)
			if err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(out, meta["name"].(string)+".yaml"), b, 0o644); err != nil {
				return nil, err
			}
			counts[ov]++
		}
	}
	return counts, nil
}

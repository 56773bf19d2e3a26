#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kubectl from the Go module proxy (no release downloads: the machines
# this project runs on reach only package registries) and collects the operators' CRDs, both cached under
# ${STREAMREC_CACHE:-~/.cache/streamrec}/k8s/. A second run with everything present takes well under a second.
#
#   scripts/k8s-tools.sh bin     etcd + kube-apiserver + kubectl into $K8S_CACHE/bin
#   scripts/k8s-tools.sh crds    the CRDs the manifests use into $K8S_CACHE/crds/<versions>/
#   scripts/k8s-tools.sh all     both (the default); prints the CRD folder on the last line
#
# Recipe and pitfalls: /work/shared/notes/k8s.md (wrapper modules, version ldflags, cass-operator's
# CRDs rendered with kustomize, Strimzi's generated with io.strimzi:crd-generator).
# Versions (override by environment):
#   K8S_VERSION 1.32.13  ETCD_VERSION 3.5.35  KEDA_VERSION 2.21.0  CASS_OPERATOR_VERSION 1.28.0
#   STRIMZI_VERSION 0.45.0 (the last Strimzi line that runs ZooKeeper-mode Kafka)
#   PROMETHEUS_OPERATOR_VERSION 0.85.0 (the only version the Go module proxy lists)
set -euo pipefail
K8S_VERSION=${K8S_VERSION:-1.32.13}
ETCD_VERSION=${ETCD_VERSION:-3.5.35}
KEDA_VERSION=${KEDA_VERSION:-2.21.0}
CASS_OPERATOR_VERSION=${CASS_OPERATOR_VERSION:-1.28.0}
STRIMZI_VERSION=${STRIMZI_VERSION:-0.45.0}
PROMETHEUS_OPERATOR_VERSION=${PROMETHEUS_OPERATOR_VERSION:-0.85.0}
K8S_CACHE=${K8S_CACHE:-${STREAMREC_CACHE:-$HOME/.cache/streamrec}/k8s}
BIN=$K8S_CACHE/bin
CRDS=$K8S_CACHE/crds/k8s-keda$KEDA_VERSION-cass$CASS_OPERATOR_VERSION-strimzi$STRIMZI_VERSION-promop$PROMETHEUS_OPERATOR_VERSION

say() { echo "k8s-tools: $*" >&2; }
die() { echo "k8s-tools: error: $*" >&2; exit 1; }
command -v go > /dev/null || die "needs Go (1.26, for etcd $ETCD_VERSION) on PATH to build etcd, kube-apiserver and kubectl"

# Debian's maven prints colour codes even with -B; strip them, keep maven's exit status.
mvn_plain() {
  mvn -B -q -Dstyle.color=never "$@" 2>&1 | sed -u $'s/\e\\[[0-9;]*m//g'
  return "${PIPESTATUS[0]}"
}
# The extracted folder of a module version in Go's module cache (downloads it once).
moddir() { go mod download -json "$1" | sed -n 's/.*"Dir": "\(.*\)",/\1/p'; }

# The version a binary reports, captured whole: `cmd | grep -q` would stop reading early and, with
# pipefail, turn the writer's SIGPIPE into a failed check.
version_of() { "$@" 2> /dev/null || true; }
etcd_ok() { [[ $(version_of "$BIN/etcd" --version) == *"etcd Version: $ETCD_VERSION"$'\n'* ]]; }

build_bin() {
  if etcd_ok && [ "$(version_of "$BIN/kube-apiserver" --version)" = "Kubernetes v$K8S_VERSION" ] \
    && [[ $(version_of "$BIN/kubectl" version --client) == *"Client Version: v$K8S_VERSION"$'\n'* ]]; then
    return 0
  fi
  mkdir -p "$BIN"
  local t; t=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: the folder of this call
  trap "rm -rf '$t'" RETURN
  export GOFLAGS=-mod=mod
  if ! etcd_ok; then
    # etcd's server module has replace directives: `go install ...@v` refuses it, a wrapper module builds it.
    say "building etcd v$ETCD_VERSION (first time: a few minutes)"
    mkdir "$t/etcd"
    (cd "$t/etcd"
      printf 'module etcdbuild\n\ngo 1.23\n' > go.mod
      printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
      go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" 2>&1 | tail -n 3
      go mod tidy
      nice -n 19 go build -trimpath -ldflags='-s -w' -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
    mv "$BIN/etcd.tmp" "$BIN/etcd"
  fi
  # kube-apiserver + kubectl: require k8s.io/kubernetes and replace each staging module (`k8s.io/x =>
  # ./staging/...` in its go.mod) with the published v0.X.Y module. The go and godebug lines are copied so
  # that runtime defaults match an official build; the version ldflags keep `kubectl version` parseable.
  say "building kube-apiserver and kubectl v$K8S_VERSION (first time: about 10 minutes on 2 cores)"
  mkdir "$t/kube"
  (cd "$t/kube"
    kmod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    [ -f "$kmod" ] || die "the Go module proxy did not serve k8s.io/kubernetes@v$K8S_VERSION (see go list -m -versions)"
    minor=$(echo "$K8S_VERSION" | cut -d. -f2)
    { echo "module kubebuild"; echo; grep -m1 '^go ' "$kmod"; echo
      grep '^godebug default=' "$kmod" || true
      echo "require k8s.io/kubernetes v$K8S_VERSION"; echo "replace ("
      grep -oE '^\s*k8s.io/[a-z0-9-]+ => ./staging' "$kmod" | awk -v v="${K8S_VERSION#1.}" '{print "\t" $1 " => " $1 " v0." v}'
      echo ")"; } > go.mod
    printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n' > tools.go
    go mod tidy
    ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    nice -n 19 go build -trimpath -ldflags="$ld" -o "$BIN/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    nice -n 19 go build -trimpath -ldflags="$ld" -o "$BIN/kubectl.tmp" k8s.io/kubernetes/cmd/kubectl)
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
  mv "$BIN/kubectl.tmp" "$BIN/kubectl"
  say "built $("$BIN/etcd" --version | head -n 1), $("$BIN/kube-apiserver" --version)"
}

# Only the CRDs of the kinds the manifests use: installing every operator CRD doubles the API server's
# start-up work for nothing.
fetch_crds() {
  [ -f "$CRDS/.complete" ] && return 0
  [ -x "$BIN/kubectl" ] || die "kubectl missing: run '$0 bin' first"
  local t; t=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$t'" RETURN
  rm -rf "$CRDS.tmp"; mkdir -p "$CRDS.tmp"/keda "$CRDS.tmp"/cass "$CRDS.tmp"/strimzi "$CRDS.tmp"/prometheus-operator
  say "collecting CRDs into $CRDS"
  local keda cass promop
  keda=$(moddir "github.com/kedacore/keda/v2@v$KEDA_VERSION") || die "KEDA v$KEDA_VERSION not served by the Go module proxy"
  cp "$keda"/config/crd/bases/keda.sh_scaledobjects.yaml "$keda"/config/crd/bases/keda.sh_triggerauthentications.yaml "$CRDS.tmp/keda/"
  # cass-operator: the released CRD is the kustomize output (spec preserves unknown fields, spec.config is an
  # object); config/crd/bases alone rejects every normal CassandraDatacenter.
  cass=$(moddir "github.com/k8ssandra/cass-operator@v$CASS_OPERATOR_VERSION") || die "cass-operator v$CASS_OPERATOR_VERSION not served"
  "$BIN/kubectl" kustomize "$cass/config/crd" > "$CRDS.tmp/cass/cass-operator-crds.yaml"
  promop=$(moddir "github.com/prometheus-operator/prometheus-operator@v$PROMETHEUS_OPERATOR_VERSION") \
    || die "prometheus-operator v$PROMETHEUS_OPERATOR_VERSION not served"
  cp "$promop"/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml \
    "$promop"/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml "$CRDS.tmp/prometheus-operator/"
  # Strimzi: the io.strimzi:api jar holds classes, no YAML; generate the CRDs as Strimzi's own build does
  # (its arguments are in META-INF/maven/io.strimzi/api/pom.xml inside the jar).
  command -v mvn > /dev/null || die "needs maven (and a JDK 17) to generate the Strimzi CRDs"
  cat > "$t/pom.xml" << POM
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
  <groupId>local.streamrec</groupId><artifactId>strimzi-crds</artifactId><version>0</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>io.strimzi</groupId><artifactId>api</artifactId><version>$STRIMZI_VERSION</version></dependency>
    <dependency><groupId>io.strimzi</groupId><artifactId>crd-generator</artifactId><version>$STRIMZI_VERSION</version></dependency>
  </dependencies></project>
POM
  mvn_plain -f "$t/pom.xml" dependency:build-classpath -Dmdep.outputFile="$t/cp.txt" >&2 \
    || die "maven could not resolve io.strimzi:api/crd-generator $STRIMZI_VERSION"
  local s=$CRDS.tmp/strimzi m=io.strimzi.api.kafka.model
  gen() { java -cp "$(cat "$t/cp.txt")" io.strimzi.crdgenerator.CrdGenerator --label app:strimzi \
    --label strimzi.io/crd-install:true --target-kube 1.16+ --crd-api-version v1 --yaml "$@" > "$t/gen.log" 2>&1 \
    || { cat "$t/gen.log" >&2; die "Strimzi CRD generation failed"; }; }
  gen --api-versions v1beta2 --storage-version v1beta2 \
    "$m.kafka.Kafka=$s/040-Crd-kafka.yaml" "$m.podset.StrimziPodSet=$s/042-Crd-strimzipodset.yaml"
  gen --api-versions v1alpha1,v1beta1,v1beta2 --storage-version v1beta2 \
    "$m.topic.KafkaTopic=$s/043-Crd-kafkatopic.yaml" "$m.user.KafkaUser=$s/044-Crd-kafkauser.yaml"
  chmod -R u+w "$CRDS.tmp"
  touch "$CRDS.tmp/.complete"
  rm -rf "$CRDS"; mv "$CRDS.tmp" "$CRDS"
}

case ${1:-all} in
  bin) build_bin ;;
  crds) fetch_crds ;;
  all) build_bin; fetch_crds; echo "$CRDS" ;;
  *) die "usage: $0 [bin|crds|all]" ;;
esac

#!/usr/bin/env bash
# make k8s-check: renders deploy/k8s's two overlays and validates them against a real kube-apiserver,
# without a cluster or Docker (docs/KUBERNETES.md, "What the check validates").
#
#  1. etcd, kube-apiserver and kubectl built from the Go module proxy, the operators' CRDs collected
#     (scripts/k8s-tools.sh; cached under ${STREAMREC_CACHE:-~/.cache/streamrec}/k8s, minutes the first time)
#  2. the generated manifests (KafkaTopics, ScaledObject) up to date with deploy/topics.env
#  3. both overlays rendered with `kubectl kustomize --load-restrictor LoadRestrictionsNone`
#  4. consistency with docker-compose.yml and the local stack (deploy/tools/k8s-check), with its
#     self-test (broken copies must be caught) and one broken rendered file that must fail
#  5. etcd + kube-apiserver on 127.0.0.1, CRDs installed, the overlays' namespaces created, then every
#     object of both overlays through `create --dry-run=server --validate=strict` and
#     `apply --server-side --dry-run=server --validate=strict`
#     and every workload's pod template once more as a Pod (the API server checks a StatefulSet's
#     template only in part; as a Pod it gets the full validation)
#  6. every file of deploy/k8s/tests/rejected refused, with the message its `# expect:` line names;
#     every file of deploy/k8s/tests/rejected-templates refused by the pod-template pass
#
# Environment: K8S_ETCD_PORT (23790), K8S_ETCD_PEER_PORT (23800), K8S_API_PORT (16443): loopback ports,
# away from the local stack's. Exits non-zero with the reason on any failure; stops what it started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
K8S_CACHE=${K8S_CACHE:-${STREAMREC_CACHE:-$HOME/.cache/streamrec}/k8s}
export K8S_CACHE
BIN=$K8S_CACHE/bin
ETCD_PORT=${K8S_ETCD_PORT:-23790}
ETCD_PEER_PORT=${K8S_ETCD_PEER_PORT:-23800}
API_PORT=${K8S_API_PORT:-16443}
OVERLAYS=(dev prod)
REJECTED=$ROOT/deploy/k8s/tests/rejected
REJECTED_TEMPLATES=$ROOT/deploy/k8s/tests/rejected-templates

T0=$(date +%s%N)
ts() { printf 'k8s-check [%s +%6.1fs] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s%N) - T0 ))e-9" "$*"; }
die() { ts "FAILED: $*" >&2; exit 1; }

command -v go > /dev/null || die "needs Go (1.26) on PATH: etcd, kube-apiserver, kubectl and the consistency check are built from source"
command -v openssl > /dev/null || die "needs openssl (the API server's service-account key)"
command -v curl > /dev/null || die "needs curl (health checks of etcd and the API server)"

W=$(mktemp -d "${TMPDIR:-/tmp}/k8s-check.XXXXXX")
ETCD_PID= API_PID=
stop() {
  local p
  for p in $API_PID $ETCD_PID; do
    kill "$p" 2> /dev/null || true
    wait "$p" 2> /dev/null || true
  done
  rm -rf "$W"
}
trap stop EXIT
trap 'exit 130' INT TERM

# --- 1. tools and CRDs (cached)
ts "tools: etcd, kube-apiserver, kubectl in $BIN (a first build: 10-35 min on 2 cores, depending on load)"
"$ROOT/scripts/k8s-tools.sh" bin 2>&1 | sed 's/^/  /' || die "could not build etcd/kube-apiserver/kubectl (log above)"
CRDS=$("$ROOT/scripts/k8s-tools.sh" all 2> "$W/crds.log" | tail -n 1) || { cat "$W/crds.log" >&2; die "could not collect the CRDs"; }
ts "tools ready: $("$BIN/kube-apiserver" --version), $("$BIN/etcd" --version | sed -n 1p); CRDs: $(find "$CRDS" -name '*.yaml' | wc -l) files in $CRDS"
KUBECTL=$BIN/kubectl

# The consistency checker, rebuilt when its sources are newer (as deploy/tools/compose-check.sh does).
src=$ROOT/deploy/tools/k8s-check
checker=$BIN/k8s-check
if [ ! -x "$checker" ] || [ -n "$(find "$src" -newer "$checker" -type f)" ]; then
  (cd "$src" && nice -n 19 go build -trimpath -o "$checker.tmp" . && mv "$checker.tmp" "$checker") || die "could not build deploy/tools/k8s-check"
fi

# --- 2. generated manifests
"$ROOT/scripts/k8s-generate.sh" --check > "$W/gen.log" 2>&1 || { cat "$W/gen.log" >&2; die "generated manifests are stale: run scripts/k8s-generate.sh"; }
ts "generated manifests up to date with deploy/topics.env (KafkaTopics, ScaledObject)"

# --- 3. render
for ov in "${OVERLAYS[@]}"; do
  "$KUBECTL" kustomize --load-restrictor LoadRestrictionsNone "$ROOT/deploy/k8s/overlays/$ov" > "$W/$ov.yaml" 2> "$W/render.log" \
    || { cat "$W/render.log" >&2; die "kustomize could not render overlay $ov"; }
  # One file per object; Namespaces apart (they are created for real, before the dry runs).
  mkdir -p "$W/$ov/objs" "$W/$ov/ns"
  awk -v d="$W/$ov/objs" '/^---$/ { n++; next } { print > (d "/" sprintf("%03d", n) ".yaml") }' "$W/$ov.yaml"
  for f in "$W/$ov/objs"/*.yaml; do grep -q '^kind: Namespace$' "$f" && mv "$f" "$W/$ov/ns/"; done
  ts "rendered overlay $ov: $(ls "$W/$ov/objs" | wc -l) objects + $(ls "$W/$ov/ns" | wc -l) namespace(s)"
done

# --- 4. consistency with compose and the local stack, and proof that it can fail
args=(-root "$ROOT")
for ov in "${OVERLAYS[@]}"; do args+=(-overlay "$ov=$W/$ov.yaml"); done
"$checker" "${args[@]}" -selftest > "$W/consistency.log" 2>&1 || { cat "$W/consistency.log" >&2; die "consistency check failed (rule broken: lines above)"; }
grep -v '^self-test: caught' "$W/consistency.log" | sed 's/^/  /'
ts "consistency ok; $(grep -c '^self-test: caught' "$W/consistency.log") broken copies caught by the self-test"
# A broken rendered file, through the command line: the state topic's ceiling off by one.
sed 's/^  maxReplicaCount: \([0-9]*\)$/  maxReplicaCount: 1\1/' "$W/prod.yaml" > "$W/prod-broken.yaml"
cmp -s "$W/prod.yaml" "$W/prod-broken.yaml" && die "could not break the prod copy (no maxReplicaCount line?)"
if "$checker" -root "$ROOT" -overlay "prod=$W/prod-broken.yaml" > "$W/broken.log" 2>&1; then
  die "the consistency check accepted a prod render whose maxReplicaCount exceeds the partition count"
fi
ts "broken prod copy rejected: $(grep -m1 'rule broken' "$W/broken.log")"
"$checker" "${args[@]}" -rules=false -pods "$W/pods" > "$W/pods.log" 2>&1 || { cat "$W/pods.log" >&2; die "could not write the pod templates"; }

# --- 5. a real API server on loopback
for port in "$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT"; do
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
    die "port $port on 127.0.0.1 is taken; choose others with K8S_ETCD_PORT, K8S_ETCD_PEER_PORT, K8S_API_PORT"
  fi
done
"$BIN/etcd" --name=k8s-check --data-dir="$W/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="k8s-check=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync --log-level=warn > "$W/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 300); do
  curl -fs "http://127.0.0.1:$ETCD_PORT/health" > /dev/null 2>&1 && break
  kill -0 "$ETCD_PID" 2> /dev/null || { tail -n 20 "$W/etcd.log" >&2; die "etcd exited"; }
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ETCD_PORT/health" > /dev/null || die "etcd not healthy after 30 s"
ts "etcd healthy on 127.0.0.1:$ETCD_PORT (pid $ETCD_PID)"

openssl genrsa -out "$W/sa.key" 2048 2> /dev/null
openssl rsa -in "$W/sa.key" -pubout -out "$W/sa.pub" 2> /dev/null
TOKEN=$(openssl rand -hex 16)
echo "$TOKEN,k8s-check,k8s-check,system:masters" > "$W/tokens.csv"
# No controller-manager runs, so no `default` ServiceAccount is ever created: the ServiceAccount
# admission plugin would reject every pod. Everything else is the stock admission chain.
"$BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --cert-dir="$W/pki" \
  --token-auth-file="$W/tokens.csv" --authorization-mode=RBAC \
  --service-account-issuer=https://kubernetes.default.svc \
  --service-account-key-file="$W/sa.pub" --service-account-signing-key-file="$W/sa.key" \
  --service-cluster-ip-range=10.96.0.0/16 --disable-admission-plugins=ServiceAccount \
  --endpoint-reconciler-type=none --enable-priority-and-fairness=false --profiling=false \
  > "$W/apiserver.log" 2>&1 &
API_PID=$!
cat > "$W/kubeconfig" << KCFG
apiVersion: v1
kind: Config
clusters: [{name: k8s-check, cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$W/pki/apiserver.crt"}}]
users: [{name: k8s-check, user: {token: "$TOKEN"}}]
contexts: [{name: k8s-check, context: {cluster: k8s-check, user: k8s-check}}]
current-context: k8s-check
KCFG
k() { "$KUBECTL" --kubeconfig="$W/kubeconfig" --cache-dir="$W/kube-cache" "$@"; }
for _ in $(seq 1200); do
  [ "$(curl -ks -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/readyz" 2> /dev/null)" = ok ] && break
  kill -0 "$API_PID" 2> /dev/null || { tail -n 30 "$W/apiserver.log" >&2; die "kube-apiserver exited"; }
  sleep 0.1
done
[ "$(curl -ks -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$API_PORT/readyz")" = ok ] \
  || { tail -n 30 "$W/apiserver.log" >&2; die "kube-apiserver not ready after 120 s"; }
ts "kube-apiserver ready on https://127.0.0.1:$API_PORT (pid $API_PID)"

# CRDs with server-side apply (the CassandraDatacenter CRD is too large for client-side apply's annotation).
k apply --server-side --field-manager=k8s-check -R -f "$CRDS" > "$W/crd.log" 2>&1 || { cat "$W/crd.log" >&2; die "CRDs refused"; }
k wait --for=condition=Established crd --all --timeout=120s > "$W/crd.log" 2>&1 || { cat "$W/crd.log" >&2; die "CRDs not Established"; }
ts "CRDs established: $(k get crd -o name | wc -l) ($(k get crd -o jsonpath='{range .items[*]}{.spec.names.kind}{" "}{end}'))"

# --- dry runs of both overlays
declare -A accepted templates
for ov in "${OVERLAYS[@]}"; do
  # Namespaces for real (NamespaceLifecycle admission runs on dry runs too), validated like the rest.
  k apply --server-side --validate=strict --field-manager=k8s-check -f "$W/$ov/ns" > "$W/ns.log" 2>&1 \
    || { cat "$W/ns.log" >&2; die "overlay $ov: Namespace refused"; }
  n=$(ls "$W/$ov/objs" | wc -l)
  # create: the POST path, strict decoding, built-in validation, CRD schemas and CEL rules, admission.
  if ! k create --dry-run=server --validate=strict -f "$W/$ov/objs" > "$W/create.log" 2>&1; then
    grep -v ' created (server dry run)$' "$W/create.log" >&2
    die "overlay $ov: objects refused by create --dry-run=server (above)"
  fi
  ts "overlay $ov: create --dry-run=server --validate=strict: $n objects accepted"
  # apply --server-side: the server-side apply path (typed merge: also refuses duplicate list keys).
  if ! k apply --server-side --dry-run=server --validate=strict --field-manager=k8s-check -f "$W/$ov/objs" > "$W/apply.log" 2>&1; then
    grep -v 'serverside-applied (server dry run)$' "$W/apply.log" >&2
    die "overlay $ov: objects refused by apply --server-side --dry-run=server (above)"
  fi
  ts "overlay $ov: apply --server-side --dry-run=server --validate=strict: $n objects accepted"
  # The pod templates again, as Pods: full pod validation, also for the StatefulSet's.
  if ! k create --dry-run=server --validate=strict -f "$W/pods/$ov" > "$W/pods.log" 2>&1; then
    grep -v ' created (server dry run)$' "$W/pods.log" >&2
    die "overlay $ov: a pod template refused as a Pod (above)"
  fi
  np=$(ls "$W/pods/$ov" | wc -l)
  ts "overlay $ov: $np pod templates accepted as Pods (create --dry-run=server --validate=strict)"
  accepted[$ov]=$(( n + $(ls "$W/$ov/ns" | wc -l) ))
  templates[$ov]=$np
  if grep -qi '^warning' "$W/create.log" "$W/apply.log"; then
    grep -hi '^warning' "$W/create.log" "$W/apply.log" | sort -u | sed "s/^/  $ov: /"
  fi
done

# --- 6. negative cases: every file must be refused, for the reason its `# expect:` line names
ns=$(grep -h -m1 '^  name:' "$W/prod/ns"/*.yaml | awk '{print $2}')
# The server's message on one line, without kubectl's "error when creating FILE:" preamble.
brief() { echo "$1" | tr '\n' ' ' | sed -e 's/^Error from server ([A-Za-z]*): error when creating "[^"]*": //' -e 's/  */ /g' | cut -c1-170; }
rejected=0 total=0
for f in "$REJECTED"/*.yaml; do
  total=$((total + 1))
  expect=$(sed -n 's/^# expect: //p' "$f" | head -n 1)
  [ -n "$expect" ] || die "$(basename "$f") has no '# expect:' line"
  if out=$(k create --dry-run=server --validate=strict -n "$ns" -f "$f" 2>&1); then
    die "NOT REJECTED: deploy/k8s/tests/rejected/$(basename "$f") was accepted by the API server"
  fi
  case $out in
    *"$expect"*) ;;
    *) die "deploy/k8s/tests/rejected/$(basename "$f") was rejected, but not with '$expect': $out" ;;
  esac
  rejected=$((rejected + 1))
  printf '  rejected %-40s %s\n' "$(basename "$f"):" "$(brief "$out")"
done
# Workloads the API server takes as they are, whose pod templates the Pod pass must refuse.
i=0
for f in "$REJECTED_TEMPLATES"/*.yaml; do
  total=$((total + 1)) i=$((i + 1))
  expect=$(sed -n 's/^# expect: //p' "$f" | head -n 1)
  [ -n "$expect" ] || die "$(basename "$f") has no '# expect:' line"
  if k create --dry-run=server --validate=strict -n "$ns" -f "$f" > /dev/null 2>&1; then
    as_is="accepted as it is"
  else
    as_is="refused as it is, too"
  fi
  "$checker" -root "$ROOT" -rules=false -overlay "bad=$f" -pods "$W/bad-pods/$i" > /dev/null 2>&1 || die "could not write the pod template of $(basename "$f")"
  if out=$(k create --dry-run=server --validate=strict -n "$ns" -f "$W/bad-pods/$i/bad" 2>&1); then
    die "NOT REJECTED: the pod template of deploy/k8s/tests/rejected-templates/$(basename "$f") was accepted as a Pod"
  fi
  case $out in
    *"$expect"*) ;;
    *) die "the pod template of deploy/k8s/tests/rejected-templates/$(basename "$f") was rejected, but not with '$expect': $out" ;;
  esac
  rejected=$((rejected + 1))
  printf '  rejected %-40s (%s) as a Pod: %s\n' "$(basename "$f"):" "$as_is" "$(brief "$out")"
done
ts "bad manifests: $rejected of $total rejected for the expected reason"

secs=$(( ($(date +%s%N) - T0) / 1000000000 ))
summary="k8s-check: ok: accepted dev=${accepted[dev]} prod=${accepted[prod]} objects (create and server-side apply dry runs) plus dev=${templates[dev]} prod=${templates[prod]} pod templates"
echo "$summary; rejected $rejected/$total bad files; consistency self-test $(grep -c '^self-test: caught' "$W/consistency.log") caught; ${secs}s"

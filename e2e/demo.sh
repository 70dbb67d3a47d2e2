#!/usr/bin/env bash
# `make demo`: a local hub + 3 member clusters (real kube-apiservers), the meshfed controller, the
# example AccessPoints, and what `kubectl get` shows. Stop everything with `make demo-down`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
FLEET_DIR=${MESHFED_FLEET_DIR:-$PWD/.fleet}
export MESHFED_FLEET_DIR=$FLEET_DIR
command -v kubectl >/dev/null || { echo "kubectl is needed to show the result (install kubectl, then re-run make demo)"; exit 1; }

echo "==> fleet: hub + 3 members over 2 regions / 3 zones"
$PY -m federation.cli fleet up --dir "$FLEET_DIR" --members 3 --regions 2 --zones 3
export KUBECONFIG=$FLEET_DIR/hub/kubeconfig

echo "==> controller (log: $FLEET_DIR/controller.log)"
if [ -f "$FLEET_DIR/controller.pid" ] && kill -0 "$(cat "$FLEET_DIR/controller.pid")" 2>/dev/null; then
  echo "    already running (pid $(cat "$FLEET_DIR/controller.pid"))"
else
  setsid $PY -m federation.cli controller --kubeconfig "$KUBECONFIG" --probe-interval 2 \
    >"$FLEET_DIR/controller.log" 2>&1 < /dev/null &
  echo $! > "$FLEET_DIR/controller.pid"
  echo "    started (pid $!)"
fi

echo "==> example AccessPoints (deploy/examples)"
kubectl apply -f deploy/examples/
echo "==> waiting for them to be Ready on every member"
kubectl wait --for=condition=Ready accesspoints --all -A --timeout=120s

echo; echo "\$ kubectl get memberclusters"; kubectl get memberclusters
echo; echo "\$ kubectl get accesspoints -A"; kubectl get accesspoints -A
echo; echo "\$ kubectl meshfed status checkout -n payments"; $PY -m federation.cli status checkout -n payments
echo; echo "\$ kubectl --kubeconfig $FLEET_DIR/member-1/kubeconfig get svc,virtualservices -n payments"
kubectl --kubeconfig "$FLEET_DIR/member-1/kubeconfig" get svc,virtualservices -n payments
cat <<EOT

The fleet keeps running. Point kubectl at the hub with:
  export KUBECONFIG=$KUBECONFIG
Members: $FLEET_DIR/member-N/kubeconfig.  Controller log: $FLEET_DIR/controller.log
Install the kubectl plugin on your PATH:  export PATH=$PWD/.venv/bin:\$PATH  (then: kubectl meshfed status checkout -n payments)
Stop everything: make demo-down
EOT

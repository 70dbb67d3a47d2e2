#!/usr/bin/env bash
# `make demo`: the whole story on this machine. A hub + 3 member clusters (real kube-apiservers), each
# member with its own istiod and gateway Envoy (VIPs forward to it) and an echo backend; BIND for DNS and
# an internal CA (all on loopback); the meshfed controller; the platform team's DNSProvider,
# CertificateIssuer and TenancyPolicy and the payments team's checkout AccessPoint + NameService
# (deploy/examples). It ends with a real HTTPS request to checkout's FQDN through a gateway VIP, the
# hub's view (ROUTES, FQDN, CERT) and a staged change paused awaiting approval.
# Run it again on a running fleet: it reuses the fleet, BIND and the CA and replays the checkout story.
# Stop everything with `make demo-down`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
FLEET_DIR=${MESHFED_FLEET_DIR:-$PWD/.fleet}
export MESHFED_FLEET_DIR=$FLEET_DIR
export PATH=$PWD/.venv/bin:$PATH   # kubectl finds the kubectl-meshfed plugin there
NS=payments
FQDN=checkout.shop.example
# deploy/examples/platform.yaml's DNSProvider names 127.0.0.1:8053; MESHFED_DEMO_DNS_PORT picks another port
# (e2e/test_demo.py: a free one), written into the DNSProvider as it is applied
DNS_SERVER=127.0.0.1 DNS_PORT=${MESHFED_DEMO_DNS_PORT:-8053}
START=$SECONDS

step() { echo; echo "==> $* ($((SECONDS - START))s)"; }
show() { echo; echo "\$ $*"; "$@"; }
wait_exists() {  # objects the controller creates (kubectl wait fails at once on a missing object)
  for _ in $(seq 1 120); do kubectl get "$1" -n $NS >/dev/null 2>&1 && return 0; sleep 1; done
  echo "    $1 was not created within 120s (controller log: $FLEET_DIR/controller.log)"; return 1
}
for tool in kubectl curl; do
  command -v $tool >/dev/null || { echo "$tool is needed to show the result (install $tool, then re-run make demo)"; exit 1; }
done

step "fleet: hub + 3 members over 2 regions / 3 zones, each member with istiod, a gateway Envoy and an echo backend"
if [ -f "$FLEET_DIR/fleet.json" ]; then
  if ! grep -q '"istio": true' "$FLEET_DIR/fleet.json"; then
    echo "    the fleet in $FLEET_DIR runs without Istio (an older demo or a test fleet): run make demo-down first"; exit 1
  fi
  echo "    a fleet already exists in $FLEET_DIR: reusing it (whatever of it stopped is started again)"
fi
fleet_up() { $PY -m cli.main fleet up --dir "$FLEET_DIR" --members 3 --regions 2 --zones 3 --istio --backends 1; }
if ! fleet_up 2>&1 | tee "${TMPDIR:-/tmp}/meshfed-demo-fleet-up.log"; then
  # Fleets pick free loopback ports when planned; another fleet on this machine may take one before the
  # process that needs it binds it. The plan is kept in fleet.json, so only a new fleet gets new ports.
  if grep -q "address already in use" "${TMPDIR:-/tmp}/meshfed-demo-fleet-up.log"; then
    echo "    a port planned for this fleet was taken meanwhile (another fleet on this machine): starting a new fleet"
    $PY -m cli.main fleet down --dir "$FLEET_DIR"
    fleet_up
  else
    exit 1
  fi
fi
export KUBECONFIG=$FLEET_DIR/hub/kubeconfig

step "BIND on $DNS_SERVER:$DNS_PORT (zone shop.example) and the internal CA, under $FLEET_DIR"
$PY -m e2e.demo_env bind "$FLEET_DIR" --address "$DNS_SERVER" --port $DNS_PORT --zone shop.example
$PY -m e2e.demo_env ca "$FLEET_DIR"
echo "    their keys as hub Secrets in meshfed-system (read only by the controller):"
kubectl -n meshfed-system create secret generic demo-bind-tsig --from-file=secret="$FLEET_DIR/bind/tsig.secret" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n meshfed-system create secret tls demo-ca --cert "$FLEET_DIR/ca/ca.crt" --key "$FLEET_DIR/ca/ca.key" \
  --dry-run=client -o yaml | kubectl apply -f -

step "checkout's backends: each member's echo backend as checkout.payments.svc.cluster.local (ServiceEntry + WorkloadEntry with locality)"
$PY -m cli.main fleet publish-backends --dir "$FLEET_DIR" --namespace $NS \
  --host checkout.payments.svc.cluster.local --service checkout

step "controller (log: $FLEET_DIR/controller.log)"
if [ -f "$FLEET_DIR/controller.pid" ] && kill -0 "$(cat "$FLEET_DIR/controller.pid")" 2>/dev/null; then
  echo "    already running (pid $(cat "$FLEET_DIR/controller.pid"))"
else
  setsid $PY -m cli.main controller --kubeconfig "$KUBECONFIG" --probe-interval 2 \
    >>"$FLEET_DIR/controller.log" 2>&1 < /dev/null &
  echo $! > "$FLEET_DIR/controller.pid"
  echo "    started (pid $!)"
fi

if kubectl get accesspoint checkout -n $NS >/dev/null 2>&1; then
  step "a previous run's checkout is on the hub: deleting it to tell the story from its first revision"
  kubectl delete accesspoint checkout -n $NS --wait --timeout=120s
  kubectl delete rolloutapprovals -n $NS --all --ignore-not-found >/dev/null
fi

step "the platform team's objects (deploy/examples/platform.yaml), then the payments team's (checkout.yaml)"
if [ "$DNS_PORT" = 8053 ]; then kubectl apply -f deploy/examples/platform.yaml
else sed "s/^    port: 8053$/    port: $DNS_PORT/" deploy/examples/platform.yaml | kubectl apply -f -; fi
kubectl apply -f deploy/examples/checkout.yaml

step "waiting for checkout: Ready on every member (objects applied, certificate delivered, every gateway proxy ACKed its routes)"
kubectl wait --for=condition=Ready accesspoint/checkout -n $NS --timeout=300s
kubectl wait --for=jsonpath='{.status.summary.routes}'=3/3 accesspoint/checkout -n $NS --timeout=120s >/dev/null
wait_exists certificate.meshfed.io/checkout
kubectl wait --for=condition=Ready certificate.meshfed.io/checkout -n $NS --timeout=120s
kubectl wait --for=condition=Ready nameservice/checkout -n $NS --timeout=120s
kubectl wait --for=jsonpath='{.status.fqdn}'=$FQDN accesspoint/checkout -n $NS --timeout=60s >/dev/null

show kubectl get memberclusters
show kubectl get accesspoints -A
show kubectl get nameservices -n $NS
show kubectl get certificates.meshfed.io -n $NS
show kubectl meshfed status checkout -n $NS

step "a real HTTPS request to $FQDN: DNS from BIND, through a gateway VIP, TLS with meshfed's certificate"
echo "\$ dig @$DNS_SERVER -p $DNS_PORT $FQDN +short"
if command -v dig >/dev/null; then dig @$DNS_SERVER -p $DNS_PORT $FQDN +short
else $PY -m e2e.demo_env resolve $FQDN --address $DNS_SERVER --port $DNS_PORT; fi
VIP=$(kubectl get accesspoint checkout -n $NS -o jsonpath='{.status.clusters[?(@.name=="member-1")].vip}')
show curl -sS --fail --retry 10 --retry-all-errors --retry-delay 1 --resolve $FQDN:443:$VIP --cacert "$FLEET_DIR/ca/ca.crt" -w '\n' -i "https://$FQDN/"
if command -v openssl >/dev/null; then
  echo
  echo "the certificate member-1's gateway serves, and the one the hub issued:"
  echo "\$ openssl s_client -connect $VIP:443 -servername $FQDN </dev/null | openssl x509 -noout -serial -issuer -ext subjectAltName"
  openssl s_client -connect $VIP:443 -servername $FQDN </dev/null 2>/dev/null | openssl x509 -noout -serial -issuer -ext subjectAltName
  show kubectl get certificates.meshfed.io checkout -n $NS -o jsonpath='{.status.serial}{"  "}{.status.hosts}{"\n"}'
fi
echo
echo "through each member's VIP (x-served-by: the gateway's cluster, set by the VirtualService; the body: the backend):"
served_by() {  # cluster -> one line: VIP, x-served-by, the backend's answer
  local vip out
  vip=$(kubectl get accesspoint checkout -n $NS -o jsonpath="{.status.clusters[?(@.name==\"$1\")].vip}")
  if out=$(curl -sS --fail --max-time 5 --resolve $FQDN:443:$vip --cacert "$FLEET_DIR/ca/ca.crt" -D - "https://$FQDN/" 2>&1); then
    tr -d '\r' <<<"$out" | awk -v c="$1" -v v="$vip" \
      'tolower($1)=="x-served-by:"{h=$2} /^\{/{b=$0} END{printf "  %-9s %-13s x-served-by: %-12s %s\n", c, v, h, b}'
  else
    printf "  %-9s %-13s request failed: %s\n" "$1" "$vip" "$out"
  fi
}
for m in member-1 member-2 member-3; do served_by $m; done
echo
echo "100 requests through member-1's gateway (one connection), by the answering backend's region"
echo "(spec.traffic.locality: 99% stay in the gateway's region, region-a; 1% go to region-b):"
urls=$(for _ in $(seq 1 100); do printf 'https://%s/ ' "$FQDN"; done)
# shellcheck disable=SC2086  # one URL per word
curl -sS --resolve $FQDN:443:$VIP --cacert "$FLEET_DIR/ca/ca.crt" -w '\n' $urls \
  | grep -o '"region": "[^"]*"' | sort | uniq -c | awk '{gsub(/"/, "", $3); printf "  %s: %d\n", $3, $1}'

step "a staged change: edit checkout (the x-served-by header gets -v2); the default rollout goes to one cluster, then waits for approval"
show kubectl -n $NS patch accesspoint checkout --type json \
  -p '[{"op":"replace","path":"/spec/template/2/spec/http/0/headers/response/set/x-served-by","value":"${cluster}-v2"}]'
kubectl wait --for=jsonpath='{.status.rollout.reason}'=AwaitingApproval accesspoint/checkout -n $NS --timeout=120s >/dev/null
echo "    (waiting until the canary's gateway has ACKed the new routes: ROUTES 3/3)"
kubectl wait --for=jsonpath='{.status.summary.routes}'=3/3 accesspoint/checkout -n $NS --timeout=120s >/dev/null
show kubectl get accesspoints -n $NS
show kubectl get rolloutapprovals -n $NS
echo
echo "the canary serves the new revision, the others the stable one:"
for _ in $(seq 1 60); do  # until the canary's gateway has the new route (pushed and ACKed: seconds)
  out=$(for m in member-1 member-2 member-3; do served_by $m; done)
  grep -q -- "-v2" <<<"$out" && break
  sleep 0.5
done
echo "$out"

DOWN_ARGS=""; [ "$FLEET_DIR" = "$PWD/.fleet" ] || DOWN_ARGS=" FLEET_DIR=$FLEET_DIR"
cat <<EOT

==> the demo took $((SECONDS - START))s. The fleet keeps running.

Approve the canary (the rollout then goes on zone by zone), or reject it:
  export KUBECONFIG=$KUBECONFIG PATH=$PWD/.venv/bin:\$PATH
  kubectl meshfed approve checkout -n $NS -m "canary looks good"      # or: kubectl meshfed reject checkout -n $NS
  kubectl get accesspoints -n $NS -w
Try: kubectl meshfed status checkout -n $NS;  curl --resolve $FQDN:443:$VIP --cacert $FLEET_DIR/ca/ca.crt https://$FQDN/
     $PY -m cli.main fleet stop-gateway member-2 --dir $FLEET_DIR   (ROUTES 2/3; start-gateway to undo)
Members: $FLEET_DIR/member-N/kubeconfig.  Controller log: $FLEET_DIR/controller.log.  BIND: $DNS_SERVER:$DNS_PORT
Stop everything (BIND, echo, istiod, gateways, controller, API servers): make demo-down$DOWN_ARGS
EOT

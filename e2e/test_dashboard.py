"""The dashboard in a real browser (issue 24): headless Debian Chromium driven by Selenium against `meshfed dashboard`
processes (one per user, each with that user's kubeconfig) on the Istio fleet (hub + 3 members, each with a real
istiod and gateway Envoy) and the controller.

- the local server's guard: no token, a foreign Host (DNS rebinding) or a foreign Origin / missing token header on
  an action: refused before anything reaches the hub;
- an AccessPoint paused for approval: the page shows the gate; bob (may edit RolloutApprovals, lacks the `approve`
  verb) clicks Approve and sees the API server's refusal while nothing changes; alice (meshfed-approver) clicks
  Approve and the next wave is released, the RolloutApproval records alice;
- gateways side by side: while the canary carries the new revision, the other clusters' gateways hold the old
  revision's routes and are shown as different; a stopped gateway is shown as different too;
- the fleet map shows a stopped member as unreachable within seconds (bounded by the controller's probe).

Screenshots of every page go to $MESHFED_DASHBOARD_SHOTS when set (docs/dashboard/*.png were taken so).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.common.by import By

from federation.kube import KubeClient
from fleet import GATEWAY_SELECTOR, Fleet, apiserver_binary, kubeconfig_dict, pki
from fleet.testing import ControllerProcess, wait_status

pytestmark = pytest.mark.e2e

FLEET = {"members": 3, "regions": 2, "zones": 2, "istio": True}
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
RAP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/rolloutapprovals"
REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = os.environ.get("MESHFED_DASHBOARD_SHOTS", "")


# ---- users, dashboards, the browser ------------------------------------------------------------------


def user_kubeconfig(fleet: Fleet, user: str) -> Path:
    """A kubeconfig with a client certificate for `user` (no groups), signed by the hub's CA."""
    assert fleet.state is not None
    hub = fleet.state.hub
    ca = pki.KeyPair((hub.path / "pki" / "ca.crt").read_bytes(), (hub.path / "pki" / "ca.key").read_bytes())
    path = fleet.root / f"{user}.kubeconfig"
    if not path.exists():
        pki.write_private(path, yaml.safe_dump(kubeconfig_dict("hub", hub.port, ca.cert_pem,
                                                               pki.issue(ca, user))).encode())
    return path


class DashboardProcess:
    """`meshfed dashboard --no-browser` as a user; `url` is the printed URL (with its token)."""

    def __init__(self, kubeconfig: Path, log: Path, *args: str) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "dashboard", "--no-browser", "--kubeconfig",
                                      str(kubeconfig), *args], stdout=subprocess.PIPE, stderr=log.open("w"),
                                     text=True, cwd=REPO)
        assert self.proc.stdout is not None
        started = time.monotonic()
        self.url = ""
        self.banner = ""
        for line in self.proc.stdout:
            if line.startswith("meshfed dashboard for "):
                self.banner = line.strip()
            if line.strip().startswith("http://"):
                self.url = line.strip()
                break
        assert self.url, f"no URL printed: {log.read_text()}"
        self.startup = time.monotonic() - started
        self.base = self.url.split("/?")[0]
        self.token = self.url.split("token=")[1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def dashboards(fleet: Fleet) -> Iterator[Callable[..., DashboardProcess]]:
    started: list[DashboardProcess] = []

    def start(user: str | None, *args: str) -> DashboardProcess:
        assert fleet.state is not None
        kubeconfig = fleet.state.hub.kubeconfig if user is None else user_kubeconfig(fleet, user)
        d = DashboardProcess(Path(kubeconfig), fleet.root / f"dashboard-{user or 'admin'}-{len(started)}.log", *args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.fail("Debian's chromium and chromium-driver are needed (make debian-deps installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1000", "--no-first-run", "--no-default-browser-check"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


async def until(check: Callable[[], Any], timeout: float, message: str) -> Any:
    """Poll a (blocking) browser check in a thread until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(check)
        except Exception as exc:  # the page re-renders under our feet: try again
            last = exc
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{message} (last: {last!r})")


def shot(driver: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1440, max(700, min(int(height) + 40, 2200)))
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))
        driver.set_window_size(1440, 1000)


def texts(driver: Any, css: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


async def text_of(driver: Any, css: str) -> str:
    """The text of the first element matching `css` (read again if the page re-rendered under us)."""
    return str(await until(lambda: driver.find_element(By.CSS_SELECTOR, css).text, 30, f"text of {css}"))


async def click(driver: Any, css: str) -> None:
    def once() -> bool:
        driver.find_element(By.CSS_SELECTOR, css).click()
        return True

    await until(once, 30, f"click {css}")


async def type_into(driver: Any, css: str, text: str) -> None:
    def once() -> bool:
        field = driver.find_element(By.CSS_SELECTOR, css)
        field.clear()
        field.send_keys(text)
        return True

    await until(once, 30, f"type into {css}")


def attr(driver: Any, css: str, name: str) -> str | None:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].get_attribute(name) if found else None


# ---- the AccessPoint ------------------------------------------------------------------------------


def template(ns: str, version: str) -> list[dict[str, Any]]:
    host = f"{version}.{ns}.example"
    return [
        {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "web"},
         "spec": {"selector": dict(GATEWAY_SELECTOR),
                  "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [host]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web"},
         "spec": {"hosts": [host], "gateways": ["web"],
                  "http": [{"route": [{"destination": {"host": f"echo.{ns}.svc.cluster.local",
                                                       "port": {"number": 8080}}}]}]}},
    ]


def rollout_of(st: dict[str, Any]) -> dict[str, Any]:
    return dict(st.get("rollout") or {})


@pytest.fixture(scope="module")
async def paused(fleet: Fleet, hub: KubeClient, controller: ControllerProcess) -> AsyncIterator[dict[str, str]]:
    """An AccessPoint whose v2 reached the canary (first member) and waits for approval; alice holds
    meshfed-approver in its namespace, bob may edit RolloutApprovals but lacks the `approve` verb."""
    assert fleet.state is not None
    ns = f"d-{uuid.uuid4().hex[:6]}"
    await hub.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                     field_manager="e2e")
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{kind}"
    await hub.create(rbac.format(ns=ns, kind="rolebindings"), {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice-approves"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "meshfed-approver"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}, field_manager="e2e")
    await hub.create(rbac.format(ns=ns, kind="roles"), {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "edit-approvals"},
        "rules": [{"apiGroups": ["meshfed.io"], "resources": ["rolloutapprovals", "accesspoints"],
                   "verbs": ["get", "list", "watch", "update", "patch"]}]}, field_manager="e2e")
    await hub.create(rbac.format(ns=ns, kind="rolebindings"), {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "bob-edits"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "edit-approvals"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}]}, field_manager="e2e")
    await fleet.publish_backends(ns, f"echo.{ns}.svc.cluster.local")
    canary = fleet.state.members[0].name
    path = f"{AP.format(ns=ns)}/web"
    await hub.create(AP.format(ns=ns), {
        "apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint", "metadata": {"name": "web", "namespace": ns},
        "spec": {"template": template(ns, "v1"), "rollout": {"waves": [
            {"name": "canary", "clusterSelector": {"matchLabels": {"meshfed.io/cluster-name": canary}},
             "after": [{"type": "Approval"}]},
            {"name": "rest"}]}}}, field_manager="e2e")
    st = await wait_status(hub, path, lambda s: (s.get("summary") or {}).get("routes") == "3/3"
                           and rollout_of(s).get("phase") == "Succeeded", timeout=180, message="v1 everywhere, 3/3")
    v1 = str(st["revision"])
    await hub.merge_patch(path, {"spec": {"template": template(ns, "v2")}})
    st = await wait_status(hub, path, lambda s: rollout_of(s).get("reason") == "AwaitingApproval"
                           and s.get("revision") != v1 and any(c["name"] == canary and c.get("routeConfigured")
                                                               and c.get("revision") == s.get("revision")
                                                               for c in s.get("clusters") or []),
                           timeout=180, message="v2 on the canary, its gateway ACKed, waiting for approval")
    yield {"ns": ns, "path": path, "v1": v1, "v2": str(st["revision"]), "canary": canary}


# ---- tests --------------------------------------------------------------------------------------------


async def test_guard_refuses_without_token_foreign_host_and_foreign_origin(
        dashboards: Callable[..., DashboardProcess]) -> None:
    d = dashboards(None)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{40,}", d.url), d.url
    port = d.base.rsplit(":", 1)[1]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(f"{d.base}/api/view?v=fleet") as r:
            assert r.status == 401, await r.text()
        async with s.get(f"{d.base}/?token=wrong", allow_redirects=False) as r:
            assert r.status == 401
        async with s.get(d.url, headers={"Host": f"evil.example:{port}"}, allow_redirects=False) as r:
            assert r.status == 403 and "DNS rebinding" in await r.text()
        async with s.get(d.url, allow_redirects=False) as r:  # the token is exchanged for a cookie
            assert r.status == 302 and "token" not in r.headers["Location"]
            assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
        async with s.get(f"{d.base}/api/view?v=fleet") as r:
            assert r.status == 200 and (await r.json())["view"] == "fleet"
        body = {"namespace": "default", "name": "x", "action": "abort"}
        for headers in ({"Origin": "http://evil.example"}, {"Origin": d.base},
                        {"Origin": "http://evil.example", "X-Meshfed-Token": d.token}):
            async with s.post(f"{d.base}/api/action", json=body, headers=headers) as r:
                assert r.status == 403, (headers, await r.text())
        async with s.post(f"{d.base}/api/action", json=body, headers={"Origin": d.base, "X-Meshfed-Token": d.token}) \
                as r:  # accepted by the guard: the hub answers (no such AccessPoint)
            assert r.status == 409 and "not found" in (await r.json())["message"]


async def test_context_flag_picks_the_identity_like_kubectl(fleet: Fleet) -> None:
    """--context chooses among a kubeconfig's contexts (its current-context otherwise), like kubectl."""
    merged: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [], "contexts": []}
    for user in ("alice", "carol"):
        one = yaml.safe_load(user_kubeconfig(fleet, user).read_text())
        merged["clusters"] = one["clusters"]
        merged["users"].append({**one["users"][0], "name": user})
        merged["contexts"].append({"name": f"as-{user}", "context": {"cluster": one["clusters"][0]["name"],
                                                                      "user": user}})
    merged["current-context"] = "as-alice"
    path = fleet.root / "two-users.kubeconfig"
    pki.write_private(path, yaml.safe_dump(merged).encode())
    default = DashboardProcess(path, fleet.root / "dashboard-context-default.log")
    chosen = DashboardProcess(path, fleet.root / "dashboard-context-carol.log", "--context", "as-carol")
    try:
        assert default.banner.startswith("meshfed dashboard for alice "), default.banner
        assert chosen.banner.startswith("meshfed dashboard for carol "), chosen.banner
    finally:
        default.stop()
        chosen.stop()


async def test_approval_gate_refused_for_bob_released_by_alice_and_gateways_side_by_side(
        fleet: Fleet, hub: KubeClient, paused: dict[str, str], dashboards: Callable[..., DashboardProcess],
        browser: Any) -> None:
    ns, path, v1, v2, canary = paused["ns"], paused["path"], paused["v1"], paused["v2"], paused["canary"]
    assert fleet.state is not None
    others = [m.name for m in fleet.state.members if m.name != canary]
    admin = dashboards(None)

    # The list: the AccessPoint waits for approval (filter), and the fleet map carries it.
    browser.get(admin.url)
    browser.get(f"{admin.base}/#/aps?waiting=1")
    await until(lambda: texts(browser, f'tr[data-ap="{ns}/web"]'), 30, "the list shows the waiting AccessPoint")
    row = texts(browser, f'tr[data-ap="{ns}/web"]')[0]
    assert "awaits approval" in row and "Paused" in row and "AwaitingApproval" in row and v2 in row, row
    shot(browser, "accesspoints")

    # Gateways side by side: the canary's gateway holds v2's route; the others still v1's: different.
    browser.get(f"{admin.base}/#/gateways/{ns}/web")

    def columns() -> dict[str, str] | None:
        found = {e.get_attribute("data-cluster"): e.get_attribute("data-different")
                 for e in browser.find_elements(By.CSS_SELECTOR, ".gw-column")}
        return found if len(found) == 3 and found.get(canary) == "false" else None

    cols = await until(columns, 60, "three gateway columns, the canary as expected")
    assert all(cols[o] == "true" for o in others), cols
    for o in others:
        column = await text_of(browser, f'.gw-column[data-cluster="{o}"]')
        assert f"carries revision {v1}, expected {v2}" in column, column
        assert f"missing v2.{ns}.example -> echo.{ns}.svc.cluster.local:8080 weight 100" in column, column
        assert f"unexpected v1.{ns}.example -> echo.{ns}.svc.cluster.local:8080 weight 100" in column, column
    canary_text = await text_of(browser, f'.gw-column[data-cluster="{canary}"]')
    assert f"v2.{ns}.example" in canary_text and "synced" in canary_text, canary_text
    await click(browser, f'button[data-detail="{canary}"]')
    await until(lambda: "virtualHost" in browser.find_element(By.ID, f"detail-{canary}").text, 30,
                "the config dump section of the canary")
    shot(browser, "gateways")

    # bob clicks Approve: the API server refuses (approval policy), nothing changes.
    bob = dashboards("bob", "-n", ns)
    browser.get(bob.url)
    browser.get(f"{bob.base}/#/ap/{ns}/web")
    gate = await until(lambda: browser.find_element(By.ID, "gate").text, 30, "bob's page shows the gate")
    assert "Waiting for approval: wave 1 canary" in gate, gate
    assert browser.find_elements(By.CSS_SELECTOR, '[data-error="memberclusters"]'), "bob cannot list clusters"
    await click(browser, 'button[data-action="approve"]')
    notice = await until(lambda: browser.find_element(By.ID, "notice").text, 30, "bob sees the answer")
    assert "refused by the API server (403" in notice and "may not approve" in notice, notice
    shot(browser, "accesspoint-refused")
    items = (await hub.request("GET", RAP.format(ns=ns)))["items"]
    waiting = [a for a in items if a["spec"].get("revision") == v2]
    assert len(waiting) == 1 and "decision" not in waiting[0]["spec"], waiting
    st = (await hub.get(path) or {})["status"]
    assert rollout_of(st)["reason"] == "AwaitingApproval" and rollout_of(st)["updated"] == "1/3", st["rollout"]

    # alice clicks Approve: the next wave is released; the RolloutApproval records alice.
    alice = dashboards("alice", "-n", ns)
    browser.get(alice.url)
    browser.get(f"{alice.base}/#/ap/{ns}/web")
    await until(lambda: browser.find_element(By.ID, "gate").text, 30, "alice's page shows the gate")
    shot(browser, "accesspoint-gate")
    await type_into(browser, "#decision-message", "canary looks good")
    clicked = time.monotonic()
    await click(browser, 'button[data-action="approve"]')
    notice = await until(lambda: browser.find_element(By.ID, "notice").text, 30, "alice sees the answer")
    assert "approved RolloutApproval" in notice and "as alice" in notice, notice
    st = await wait_status(hub, path, lambda s: rollout_of(s).get("phase") == "Succeeded"
                           and rollout_of(s).get("stable") == v2, timeout=120, message="v2 released everywhere")
    rap = (await hub.get(f"{RAP.format(ns=ns)}/{waiting[0]['metadata']['name']}")) or {}
    assert rap["spec"]["decision"] == "Approved" and rap["spec"]["approver"] == "alice", rap["spec"]
    assert rap["spec"]["reason"] == "canary looks good"
    # ... and the page followed by itself (no reload): both waves done, the approval granted to alice.
    await until(lambda: attr(browser, '.wave[data-wave="2"]', "data-state") == "Done", 60, "wave 2 Done on the page")
    print(f"approve click -> wave 2 Done on the page: {time.monotonic() - clicked:.1f}s")
    assert "✓ alice" in await text_of(browser, "#timeline")
    assert not browser.find_elements(By.ID, "gate")
    await wait_status(hub, path, lambda s: (s.get("summary") or {}).get("routes") == "3/3", timeout=120,
                      message="routes 3/3 on v2")
    shot(browser, "accesspoint")

    # Every gateway on v2 now: the same view shows no difference; a stopped gateway is different.
    browser.get(f"{admin.base}/#/gateways/{ns}/web")
    await until(lambda: (lambda c: len(c) == 3 and all(v == "false" for v in c.values()))(
        {e.get_attribute("data-cluster"): e.get_attribute("data-different")
         for e in browser.find_elements(By.CSS_SELECTOR, ".gw-column")}), 60, "every gateway as expected")
    stopped = others[0]
    fleet.stop_gateway(stopped)
    try:
        t0 = time.monotonic()
        await until(lambda: attr(browser, f'.gw-column[data-cluster="{stopped}"]', "data-different") == "true",
                    60, "the stopped gateway shown as different")
        print(f"gateway of {stopped} stopped -> shown as different: {time.monotonic() - t0:.1f}s")
        column = await text_of(browser, f'.gw-column[data-cluster="{stopped}"]')
        assert "no gateway proxy connected to istiod" in column, column
        shot(browser, "gateways-stopped")
    finally:
        await fleet.start_gateway(stopped)


async def test_fleet_map_shows_a_stopped_member_unreachable_within_seconds(
        fleet: Fleet, hub: KubeClient, controller: ControllerProcess, dashboards: Callable[..., DashboardProcess],
        browser: Any) -> None:
    assert fleet.state is not None
    d = dashboards(None)
    browser.get(d.url)
    names = [m.name for m in fleet.state.members]

    def reachability() -> dict[str, str]:
        return {e.get_attribute("data-cluster"): e.get_attribute("data-reachability")
                for e in browser.find_elements(By.CSS_SELECTOR, ".cluster")}

    await until(lambda: reachability() == dict.fromkeys(names, "reachable"), 60, "every member reachable")
    shot(browser, "fleet")
    victim = fleet.state.member(names[-1])
    t0 = time.monotonic()  # from the stop request: SIGTERM, SIGKILL after 1 s (a graceful exit takes 15 s)
    victim.stop(timeout=1.0)
    gone = time.monotonic() - t0
    fleet.save()
    try:
        await until(lambda: reachability().get(victim.name) == "unreachable", 15,
                    f"{victim.name} shown unreachable")
        elapsed = time.monotonic() - t0
        print(f"member {victim.name}: stop requested -> process gone {gone:.1f}s -> unreachable on the map "
              f"{elapsed:.1f}s")
        assert "level-bad" in (attr(browser, f'.cluster[data-cluster="{victim.name}"]', "class") or "")
        assert "unreachable" in await text_of(browser, f'.cluster[data-cluster="{victim.name}"]')
        assert all(v == "reachable" for k, v in reachability().items() if k != victim.name)
        shot(browser, "fleet-unreachable")
    finally:
        victim.start(apiserver_binary(quiet=True))
        await victim.wait_ready()
        fleet.save()
    await until(lambda: reachability().get(victim.name) == "reachable", 60, f"{victim.name} reachable again")
    print(json.dumps(reachability()))

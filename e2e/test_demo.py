"""`make demo` tells the whole story (issue 10, part 5): e2e/demo.sh run as a user runs it, in a fleet directory
of its own and with BIND on a free port (MESHFED_DEMO_DNS_PORT), then `make demo-down`.

Checks what the script printed: checkout Ready with ROUTES 3/3, its FQDN and CERT filled, the NameService and
Certificate Ready; BIND answering the FQDN with the three VIPs; a real HTTPS request through member-1's VIP
answered by an echo backend of member-1's region, through the gateway of member-1; the certificate the gateway
serves is the one the hub reports; the staged change paused awaiting approval with its RolloutApproval pending
and only the canary serving the new revision. Then `make demo-down` leaves none of the processes it started
(BIND, controller, API servers, istiods, gateways, relays, echo) and no fleet directory. About 1.5 minutes on
2 cores with the binaries built.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from dnsservers import free_port  # e2e/ is on sys.path for its test modules (no __init__.py)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def column(table: str, name: str, row_key: str) -> str:
    """The `name` column of the row starting with (or, with a NAMESPACE column, naming) `row_key`."""
    lines = table.strip().splitlines()
    header = lines[0]
    start = header.index(name)
    end = min((m.start() for m in re.finditer(r"\S+", header) if m.start() > start), default=None)
    for line in lines[1:]:
        if row_key in line.split():
            return line[start:end].strip()
    raise AssertionError(f"no row {row_key!r} in\n{table}")


def block(output: str, command: str, until: str = "\n\n") -> str:
    """What the demo printed after `$ <command>` up to `until` (the next blank line)."""
    marker = f"$ {command}\n"
    assert marker in output, f"the demo did not run {command!r}:\n{output[-3000:]}"
    return output.split(marker, 1)[1].split(until, 1)[0]


def group_pids(root: Path) -> list[int]:
    state = json.loads((root / "fleet.json").read_text())
    pids = [state["hub"]["pid"], *(m["pid"] for m in state["members"]), *state["aux_pids"].values()]
    for m in state["members"]:
        pids += [m["istio"]["istiod_pid"], m["istio"]["agent_pid"]]
    pids += [int((root / f).read_text()) for f in ("bind.pid", "controller.pid")]
    found = []
    for entry in os.listdir("/proc"):  # the members of those process groups (Envoy under pilot-agent, ...)
        if entry.isdigit():
            try:
                pgid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[2])
            except (OSError, IndexError, ValueError):
                continue
            if pgid in pids:
                found.append(int(entry))
    return sorted(set(pids) | set(found))


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_make_demo_tells_the_whole_story_and_demo_down_stops_everything(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    env = {**os.environ, "MESHFED_FLEET_DIR": str(root), "MESHFED_DEMO_DNS_PORT": str(free_port())}
    try:
        run = subprocess.run(["bash", "e2e/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        out = run.stdout.replace("\r", "")  # curl -i prints the HTTP/2 headers with CRLF
        (tmp_path / "demo.log").write_text(out + "\n--- stderr ---\n" + run.stderr)  # the whole story, for a failure
        print(out[-6000:], run.stderr[-3000:])
        assert run.returncode == 0, f"make demo failed ({run.returncode}):\n{out[-3000:]}\n{run.stderr[-3000:]}"
        pids = group_pids(root)
    finally:
        down = subprocess.run(["make", "-s", "demo-down", f"FLEET_DIR={root}"], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr

    aps = block(out, "kubectl get accesspoints -A")
    for name, want in {"CLUSTERS": "3/3", "PHASE": "Ready", "ROUTES": "3/3", "FQDN": "checkout.shop.example",
                       "ROLLOUT": "Succeeded"}.items():
        assert column(aps, name, "checkout") == want, (name, aps)
    assert re.fullmatch(r"rev 1, \d+d", column(aps, "CERT", "checkout")), aps
    assert column(block(out, "kubectl get nameservices -n payments"), "READY", "checkout") == "True"
    assert column(block(out, "kubectl get certificates.meshfed.io -n payments"), "READY", "checkout") == "True"
    status = block(out, "kubectl meshfed status checkout -n payments", until="\n==> ")
    assert "Routes: 3/3" in status and re.search(r"IstioAnalysis\s+True\s+NoMessages", status), status

    vips = sorted(column(aps, "VIPS", "checkout").split(","))
    dig = out.split("checkout.shop.example +short\n", 1)[1].split("\n\n", 1)[0]
    assert sorted(dig.split()) == vips, (dig, vips)

    answer = out.split("https://checkout.shop.example/\n", 1)[1].split("\n\n", 2)
    headers, body = answer[0], json.loads(answer[1].strip())
    assert headers.startswith("HTTP/2 200"), headers
    assert "x-served-by: member-1\n" in headers + "\n", headers  # member-1's gateway, through member-1's VIP
    # One request may leave the region (1%): the locality split is told by the 100 counted below.
    assert body["host"] == "checkout.shop.example" and body["region"] in ("region-a", "region-b"), body
    counted = out.split("1% go to region-b):\n", 1)[1].split("\n\n", 1)[0]
    by_region = {region: int(n) for region, n in re.findall(r"^  (region-[ab]): (\d+)$", counted, re.M)}
    # Binomial(100, 0.99): fewer than 90 kept in region-a has a probability of about 1e-8.
    assert sum(by_region.values()) == 100 and by_region.get("region-a", 0) >= 90, counted

    if "openssl s_client" in out:
        served = re.search(r"^serial=([0-9A-F]+)$", out, re.M)
        hub_serial = re.search(r"^([0-9a-f]+)  \[\"checkout", out, re.M)
        assert served and hub_serial, out  # openssl pads the serial to whole bytes, the hub does not
        assert int(served.group(1), 16) == int(hub_serial.group(1), 16), (served.group(1), hub_serial.group(1))

    paused = block(out, "kubectl get accesspoints -n payments")
    assert column(paused, "ROLLOUT", "checkout") == "Paused", paused
    assert column(paused, "REASON", "checkout") == "AwaitingApproval", paused
    assert column(paused, "ROUTES", "checkout") == "3/3", paused
    approvals = block(out, "kubectl get rolloutapprovals -n payments")
    assert column(approvals, "PHASE", "canary") == "Pending", approvals
    after = out.split("the canary serves the new revision, the others the stable one:\n", 1)[1].split("\n\n", 1)[0]
    served_by = dict(re.findall(r"^\s+(member-\d)\s+\S+\s+x-served-by: (\S+)", after, re.M))
    canary = [m for m, header in served_by.items() if header == f"{m}-v2"]
    stable = [m for m, header in served_by.items() if header == m]
    assert len(served_by) == 3 and len(canary) == 1 and len(stable) == 2, after
    assert "kubectl meshfed approve checkout -n payments" in out

    left = [p for p in pids if running(p)]
    assert not left, f"still running after make demo-down: {[(p, Path(f'/proc/{p}/comm').read_text()) for p in left]}"
    assert not root.exists()

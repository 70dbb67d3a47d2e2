"""The container image (`make image`) runs the controller as deploy/controller/deployment.yaml does.

`make image-test` builds the image and runs this module (not part of `make test`: marker `image`). The
image's OCI layout (build/image/oci, or $MESHFED_IMAGE) is unpacked with umoci and the Deployment's
container runs from it (e2e/container.py: own mount and PID namespaces, chroot into the image's root
filesystem): the Deployment's command, arguments and environment, its securityContext (runAsUser and
runAsGroup 65532, read-only root filesystem), its emptyDir /tmp, and what the kubelet gives a Pod of
serviceAccountName meshfed-controller: a token of that ServiceAccount (TokenRequest, deploy/ applied to
the hub as `kubectl apply -k deploy` would), the hub's CA and the namespace mounted at
/var/run/secrets/kubernetes.io/serviceaccount, and KUBERNETES_SERVICE_HOST/PORT. Nothing else: no
kubeconfig. The one change: the liveness endpoint listens on a free loopback port instead of
0.0.0.0:8080 (the container shares the host's network here), and is probed like the kubelet's
livenessProbe.

Checks: an AccessPoint reaches Ready on both members through the containerised controller, with the
Deployment's MESHFED_HUB_ID in the owner labels; the process is the image's entry point running as
65532; `meshfed sds --in-cluster` starts from the same image with the meshfed-sds ServiceAccount; and
the controller stops on SIGTERM within the Deployment's terminationGracePeriodSeconds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from certservers import write_pem_pair
from container import Container, unpack  # e2e/ is on sys.path for its test modules (no __init__.py)

from certs.ca import InternalCA, generate_ca
from federation.kube import KubeClient
from fleet import HUB_NAMESPACE, REPO, Fleet, free_port
from fleet.testing import (
    DEPLOY,
    apply_objects,
    eventually,
    kustomize_objects,
    service_account_token,
    wait_status,
)
from fleet.testing import condition as cond

pytestmark = [pytest.mark.e2e, pytest.mark.image]

FLEET = {"members": 2, "regions": 1, "zones": 2}
LAYOUT = Path(os.environ.get("MESHFED_IMAGE", REPO / "build" / "image" / "oci"))
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
AP = "/apis/meshfed.io/v1alpha1/namespaces/{ns}/accesspoints"
VS = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices"


def deployment() -> dict[str, Any]:
    (obj,) = [d for d in yaml.safe_load_all((DEPLOY / "controller" / "deployment.yaml").read_text()) if d]
    return dict(obj)


def image_ref() -> str:
    import json

    if not (LAYOUT / "index.json").exists():
        pytest.fail(f"no image at {LAYOUT}: run `make image` first (`make image-test` builds it and runs this test)")
    (desc,) = json.loads((LAYOUT / "index.json").read_text())["manifests"]
    return str(desc["annotations"]["org.opencontainers.image.ref.name"])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The image unpacked once for the module (rootfs + runtime config); removed afterwards (~250 MB)."""
    path = tmp_path_factory.mktemp("image") / "bundle"
    config = unpack(LAYOUT, image_ref(), path)
    try:
        yield path, config
    finally:
        shutil.rmtree(path, ignore_errors=True)


def service_account_files(directory: Path, token: str, ca: Path, namespace: str) -> Path:
    """What the kubelet's projected kube-api-access volume holds (files 0644, as its defaultMode)."""
    directory.mkdir(parents=True)
    for name, content in (("token", token), ("ca.crt", ca.read_text()), ("namespace", namespace)):
        (directory / name).write_text(content)
        (directory / name).chmod(0o644)
    return directory


POD_NAME = "meshfed-controller-7d9f8c6b5-x2x4q"  # what the kubelet would name a pod of the Deployment


def env_value(entry: dict[str, Any]) -> str:
    """An env entry of the Deployment's container as the kubelet would set it: `value`, or the downward
    API fields the Deployment uses (metadata.name / metadata.namespace of the pod)."""
    if "value" in entry:
        return str(entry["value"])
    field_path = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
    pod_fields = {"metadata.name": POD_NAME, "metadata.namespace": HUB_NAMESPACE}
    assert field_path in pod_fields, f"env {entry['name']}: this test does not emulate {entry.get('valueFrom')}"
    return pod_fields[field_path]


def container_for(bundle: tuple[Path, dict[str, Any]], spec: dict[str, Any], command: list[str],
                  extra_env: dict[str, str], sa_files: Path, log: Path,
                  binds: dict[str, Path] | None = None) -> Container:
    """A Container of the image for the Deployment's pod `spec` running `command` (a copy of the bundle's
    rootfs per container is not needed: the root filesystem is mounted read-only)."""
    path, config = bundle
    pod = spec["template"]["spec"]
    (ctr,) = pod["containers"]
    image_env = dict(e.split("=", 1) for e in config["process"]["env"])
    env = {**image_env, **{e["name"]: env_value(e) for e in ctr.get("env", [])}, **extra_env}
    sec = pod.get("securityContext", {})
    user = (int(sec.get("runAsUser", config["process"]["user"]["uid"])),
            int(sec.get("runAsGroup", config["process"]["user"]["gid"])))
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tmpfs = {m["mountPath"]: str(volumes[m["name"]]["emptyDir"].get("sizeLimit", "64Mi")).replace("Mi", "m")
             for m in ctr.get("volumeMounts", []) if "emptyDir" in volumes[m["name"]]}
    return Container(bundle=path, command=command, env=env, user=user, log_path=log,
                     read_only=bool(ctr.get("securityContext", {}).get("readOnlyRootFilesystem")),
                     tmpfs=tmpfs, binds={SA_DIR: sa_files, **(binds or {})})


def liveness_url(args: list[str]) -> tuple[list[str], str]:
    """The Deployment's arguments with its liveness endpoint moved to a free loopback port."""
    i = args.index("--liveness")
    url = f"http://127.0.0.1:{free_port()}/healthz"
    return [*args[:i + 1], url, *args[i + 2:]], url


def healthz(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except OSError:
        return 0


def check_process(container: Container) -> None:
    """The container's PID 1 is the image's `meshfed controller` (the virtualenv's python running the entry
    point), as uid/gid 65532 everywhere, with no capabilities, rooted in the image's root filesystem."""
    pid = container.init_pid()
    assert pid is not None
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split() == ["65532"] * 4, status
    assert fields["Gid"].split() == ["65532"] * 4, status
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0, "capabilities must be dropped"
    assert os.readlink(f"/proc/{pid}/root") == str(container.rootfs)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:3] == [b"/opt/meshfed/bin/python", b"/opt/meshfed/bin/meshfed", b"controller"], cmdline


@pytest.fixture(scope="module")
async def installed(fleet: Fleet, hub: KubeClient) -> AsyncIterator[dict[str, Any]]:
    """deploy/ applied to the hub, as `kubectl apply -k deploy` (the Deployment object stays unscheduled:
    the hub has no kubelet; this module plays its part)."""
    await apply_objects(hub, kustomize_objects(DEPLOY))
    yield deployment()


async def test_controller_from_the_image_makes_an_accesspoint_ready(
    fleet: Fleet, hub: KubeClient, members: dict[str, KubeClient], namespace: str, installed: dict[str, Any],
    bundle: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    assert fleet.state is not None
    spec = installed["spec"]
    pod = spec["template"]["spec"]
    (ctr,) = pod["containers"]
    sa_ns = installed["metadata"]["namespace"]
    token = await service_account_token(hub, sa_ns, pod["serviceAccountName"])
    sa_files = service_account_files(tmp_path / "controller-sa", token, fleet.state.hub.path / "pki" / "ca.crt",
                                     sa_ns)
    in_cluster = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(fleet.state.hub.port)}
    args, url = liveness_url(list(ctr["args"]))
    assert not list(bundle[0].joinpath("rootfs").glob("**/kubeconfig")), "the image must hold no kubeconfig"
    controller = container_for(bundle, spec, [*ctr["command"], *args], in_cluster, sa_files,
                               tmp_path / "controller.log")
    controller.start()
    code: int | None = -1
    try:
        # the kubelet's livenessProbe (httpGet /healthz) answers once kopf runs
        async def live() -> bool:
            return await asyncio.to_thread(healthz, url) == 200

        await eventually(live, timeout=90, interval=0.5,
                         message=f"liveness {url} not answering; log:\n{controller.log_tail()}")
        check_process(controller)

        ap = {"apiVersion": "meshfed.io/v1alpha1", "kind": "AccessPoint",
              "metadata": {"name": "shop", "namespace": namespace},
              "spec": {"template": [
                  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"},
                   "spec": {"type": "LoadBalancer", "selector": {"app": "gw"},
                            "ports": [{"name": "https", "port": 443, "targetPort": 8443}]}},
                  {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "app"},
                   "spec": {"hosts": ["app.example"], "gateways": ["gw"],
                            "http": [{"route": [{"destination": {"host": "app.svc.cluster.local"}}],
                                      "headers": {"response": {"set": {"x-cluster": "${cluster}"}}}}]}}]}}
        await hub.create(AP.format(ns=namespace), ap, field_manager="e2e")

        def ready(st: dict[str, Any]) -> bool:
            return cond(st, "Ready").get("status") == "True" and (st.get("summary") or {}).get("clusters") == "2/2"

        st = await wait_status(hub, f"{AP.format(ns=namespace)}/shop", ready, timeout=90,
                               message=f"AccessPoint not Ready through the image's controller; log:\n"
                                       f"{controller.log_tail()}", show=("summary", "conditions", "clusters"))
        assert {c["name"] for c in st["clusters"]} == set(members)
        hub_id = next(e["value"] for e in ctr["env"] if e["name"] == "MESHFED_HUB_ID")
        for name, client in members.items():
            vs = await client.get(f"{VS.format(ns=namespace)}/app")
            assert vs is not None, f"VirtualService missing on {name}"
            assert vs["metadata"]["labels"]["meshfed.io/hub"] == hub_id
            assert vs["spec"]["http"][0]["headers"]["response"]["set"]["x-cluster"] == name

        # `meshfed sds` from the same image, in-cluster as ServiceAccount meshfed-sds (deploy/rbac/sds.yaml)
        sds_files = service_account_files(tmp_path / "sds-sa", await service_account_token(hub, sa_ns, "meshfed-sds"),
                                          fleet.state.hub.path / "pki" / "ca.crt", sa_ns)
        sds_port = free_port()
        # TCP only with mutual TLS: the server's certificate from meshfed's internal CA, the same CA for clients
        ca = InternalCA(*generate_ca("meshfed e2e sds CA"))
        tls_dir = tmp_path / "sds-tls"
        server = ca.issue_sync(["localhost"], timedelta(days=1))
        write_pem_pair(tls_dir, "tls", server.cert_pem, server.key_pem)
        (tls_dir / "ca.crt").write_bytes(ca.ca_pem)
        tls = "/etc/meshfed/sds-tls"
        sds = container_for(bundle, spec, ["meshfed", "sds", "--in-cluster", "--listen", f"127.0.0.1:{sds_port}",
                                           "--tls-cert", f"{tls}/tls.crt", "--tls-key", f"{tls}/tls.key",
                                           "--client-ca", f"{tls}/ca.crt"],
                            in_cluster, sds_files, tmp_path / "sds.log", binds={tls: tls_dir})
        os.chown(tls_dir / "tls.key", sds.user[0], -1)  # mode 0600: readable by the container's user only
        sds.start()
        try:
            def connects() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", sds_port)) == 0

            async def listening() -> bool:
                return await asyncio.to_thread(connects)

            await eventually(listening, timeout=60, interval=0.5,
                             message=f"meshfed sds not listening; log:\n{sds.log_tail()}")
            assert sds.proc is not None and sds.proc.poll() is None, sds.log_tail()
        finally:
            sds.stop(grace=10)
        for text in (controller.log_tail(100_000), sds.log_tail(100_000)):
            assert "Traceback" not in text and "forbidden" not in text.lower(), text[-4000:]
    finally:
        code = controller.stop(grace=float(pod.get("terminationGracePeriodSeconds", 30)))
    assert code == 0, f"controller did not stop cleanly on SIGTERM (exit {code}); log:\n{controller.log_tail()}"


def test_image_config_matches_the_deployment(bundle: tuple[Path, dict[str, Any]]) -> None:
    """The image's user is the Deployment's runAsUser/runAsGroup, `meshfed` is on its PATH (the Deployment's
    command) and its entry point, and it runs read-only: no byte code to write (PEP 552 checked-hash .pyc)."""
    path, config = bundle
    pod = deployment()["spec"]["template"]["spec"]
    sec = pod["securityContext"]
    assert (config["process"]["user"]["uid"], config["process"]["user"]["gid"]) == (sec["runAsUser"],
                                                                                   sec["runAsGroup"])
    assert config["process"]["args"] == ["/opt/meshfed/bin/meshfed"]
    env = dict(e.split("=", 1) for e in config["process"]["env"])
    assert env["PATH"].split(":")[0] == "/opt/meshfed/bin"
    (ctr,) = pod["containers"]
    assert (path / "rootfs/opt/meshfed/bin" / ctr["command"][0]).exists()
    where = "import cli.main, importlib.util as u; print(u.cache_from_source(cli.main.__file__))"
    out = subprocess.run(["chroot", "--userspec=65532:65532", str(path / "rootfs"), "/opt/meshfed/bin/python", "-c",
                          where], capture_output=True, text=True, env={"PATH": env["PATH"]}, check=True)
    pyc = path / "rootfs" / out.stdout.strip().lstrip("/")
    assert pyc.exists() and pyc.read_bytes()[4:8] == (3).to_bytes(4, "little"), "checked-hash .pyc expected"

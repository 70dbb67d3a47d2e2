"""The in-cluster configuration a Pod gets (federation.kube.in_cluster_config, KubeClient.in_cluster and the
controller's kopf login): KUBERNETES_SERVICE_HOST/PORT and the ServiceAccount files in a directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from certs.ca import generate_ca
from federation.kube import InClusterError, KubeClient, in_cluster_config
from federation.operator import in_cluster_login

ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def service_account(tmp_path: Path, token: str = "tok-1", ca: str = "-----BEGIN CERTIFICATE-----\n",
                    namespace: str | None = "meshfed-system") -> Path:
    (tmp_path / "token").write_text(token)
    (tmp_path / "ca.crt").write_text(ca)
    if namespace is not None:
        (tmp_path / "namespace").write_text(namespace)
    return tmp_path


def test_server_token_ca_and_namespace(tmp_path: Path) -> None:
    found = in_cluster_config(ENV, str(service_account(tmp_path)))
    assert found.server == "https://10.96.0.1:443"
    assert found.token_path == str(tmp_path / "token")
    assert found.ca_path == str(tmp_path / "ca.crt")
    assert found.namespace == "meshfed-system"
    assert found.token() == "tok-1"


def test_ipv6_service_host_in_brackets(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert in_cluster_config(env, str(service_account(tmp_path))).server == "https://[fd00:10:96::1]:6443"


def test_namespace_file_is_optional(tmp_path: Path) -> None:
    assert in_cluster_config(ENV, str(service_account(tmp_path, namespace=None))).namespace is None


@pytest.mark.parametrize("missing", ["KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"])
def test_missing_service_env_is_named(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(InClusterError, match=r"KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT.*--kubeconfig"):
        in_cluster_config(env, str(service_account(tmp_path)))


@pytest.mark.parametrize(("name", "what"), [("token", "token"), ("ca.crt", "CA certificate")])
def test_missing_or_empty_files_are_named(tmp_path: Path, name: str, what: str) -> None:
    directory = service_account(tmp_path)
    (directory / name).write_text("")
    message = f"service-account {what} {directory / name} is missing or empty"
    with pytest.raises(InClusterError, match=re.escape(message)):
        in_cluster_config(ENV, str(directory))
    (directory / name).unlink()
    with pytest.raises(InClusterError, match=re.escape(f"{directory / name} is missing")):
        in_cluster_config(ENV, str(directory))


async def test_kube_client_uses_the_service_host_token_and_ca(tmp_path: Path) -> None:
    directory = service_account(tmp_path, ca=generate_ca("in-cluster test CA")[0].decode())
    client = await KubeClient.in_cluster("hub", environ=ENV, directory=str(directory))
    try:
        cfg = client.api.configuration
        assert client.host == "https://10.96.0.1:443"
        assert cfg.ssl_ca_cert == str(directory / "ca.crt")
        headers = await client._headers("application/json")
        assert headers["authorization"] == "Bearer tok-1"
    finally:
        await client.close()


def test_kopf_login_uses_the_service_host_and_reads_the_token_again(tmp_path: Path) -> None:
    """Not kopf's login_with_service_account (https://kubernetes.default.svc, needs cluster DNS); the token
    is read on every login, so the one kopf fetches after a 401 is the kubelet's rotated token."""
    directory = service_account(tmp_path)
    info = in_cluster_login(ENV, str(directory))
    assert (info.server, info.token, info.ca_path, info.default_namespace) == (
        "https://10.96.0.1:443", "tok-1", str(directory / "ca.crt"), "meshfed-system")
    (directory / "token").write_text("tok-2\n")
    assert in_cluster_login(ENV, str(directory)).token == "tok-2"

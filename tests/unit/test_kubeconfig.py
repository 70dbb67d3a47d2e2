"""The one kubeconfig loader (federation.kube): kubectl's merge of the KUBECONFIG list, --context, the
context's namespace (the default of -n), relative file names against the kubeconfig's directory,
`--flatten` and the refusal of credentials the controller's Pod cannot use."""

from __future__ import annotations

import argparse
import base64
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.common import hub_config
from federation.kube import (
    KubeconfigError,
    flatten,
    kubeconfig_from_dict,
    load_kubeconfig,
    merge_kubeconfigs,
    portability_problem,
    select_context,
)


def doc(clusters: dict[str, Any] | None = None, users: dict[str, Any] | None = None,
        contexts: dict[str, Any] | None = None, current: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": k, "cluster": v} for k, v in (clusters or {}).items()],
        "users": [{"name": k, "user": v} for k, v in (users or {}).items()],
        "contexts": [{"name": k, "context": v} for k, v in (contexts or {}).items()],
    }
    if current is not None:
        out["current-context"] = current
    return out


def write(path: Path, content: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(content))
    return str(path)


def test_first_file_wins_each_name_whole_and_the_first_current_context() -> None:
    first = doc(clusters={"hub": {"server": "https://first:6443"}}, users={"me": {"token": "one"}},
                contexts={"a": {"cluster": "hub", "user": "me"}}, current="a")
    second = doc(clusters={"hub": {"server": "https://second:6443", "insecure-skip-tls-verify": True},
                           "other": {"server": "https://other:6443"}},
                 users={"me": {"token": "two"}, "you": {"token": "three"}},
                 contexts={"b": {"cluster": "other", "user": "you", "namespace": "payments"}}, current="b")
    merged = merge_kubeconfigs([("/k/first", first), ("/k/second", second)])
    assert merged["current-context"] == "a"  # the first file that sets it
    chosen = select_context(merged, None)
    # `hub` is the first file's, whole: the second's extra field is not merged into it
    assert chosen.cluster == {"server": "https://first:6443"}
    assert chosen.user == {"token": "one"}
    assert chosen.namespace is None
    other = select_context(merged, "b")  # --context: entries of the second file are there too
    assert (other.cluster["server"], other.user["token"], other.namespace) == ("https://other:6443", "three",
                                                                               "payments")


def test_a_later_file_sets_current_context_when_the_first_does_not() -> None:
    merged = merge_kubeconfigs([("/k/a", doc(clusters={"c": {"server": "https://c"}})),
                                ("/k/b", doc(contexts={"x": {"cluster": "c"}}, current="x"))])
    assert select_context(merged, None).context == "x"


def test_relative_file_names_resolve_against_the_directory_of_the_file_naming_them() -> None:
    first = doc(contexts={"a": {"cluster": "c", "user": "u"}}, current="a")
    second = doc(clusters={"c": {"server": "https://c", "certificate-authority": "pki/ca.crt"}},
                 users={"u": {"client-certificate": "../certs/me.crt", "client-key": "/abs/me.key",
                              "tokenFile": "token", "exec": {"command": "./bin/login", "apiVersion": "x"}}})
    chosen = select_context(merge_kubeconfigs([("/one/config", first), ("/two/sub/config", second)]), None)
    assert chosen.cluster["certificate-authority"] == "/two/sub/pki/ca.crt"
    assert chosen.user["client-certificate"] == "/two/certs/me.crt"
    assert chosen.user["client-key"] == "/abs/me.key"
    assert chosen.user["tokenFile"] == "/two/sub/token"
    assert chosen.user["exec"]["command"] == "/two/sub/bin/login"
    # a bare command is looked up in PATH, as kubectl does
    bare = doc(clusters={"c": {"server": "https://c"}}, users={"u": {"exec": {"command": "aws"}}},
               contexts={"a": {"cluster": "c", "user": "u"}}, current="a")
    assert select_context(merge_kubeconfigs([("/x/config", bare)]), None).user["exec"]["command"] == "aws"


@pytest.mark.parametrize(("context", "message"), [
    (None, "sets no current-context: pass --context (contexts: a)"),
    ("zz", "context 'zz' is not in /k/config (contexts: a)"),
])
def test_context_errors_name_the_contexts(context: str | None, message: str) -> None:
    merged = merge_kubeconfigs([("/k/config", doc(clusters={"c": {"server": "https://c"}},
                                                  contexts={"a": {"cluster": "c"}}))])
    with pytest.raises(KubeconfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_context(merged, context, ["/k/config"])


def test_missing_cluster_user_or_server_are_named() -> None:
    with pytest.raises(KubeconfigError, match="names cluster 'nope'"):
        kubeconfig_from_dict(doc(contexts={"a": {"cluster": "nope"}}, current="a"))
    with pytest.raises(KubeconfigError, match="names user 'ghost'"):
        kubeconfig_from_dict(doc(clusters={"c": {"server": "https://c"}},
                                 contexts={"a": {"cluster": "c", "user": "ghost"}}, current="a"))
    with pytest.raises(KubeconfigError, match=r"cluster 'c' .* has no server"):
        kubeconfig_from_dict(doc(clusters={"c": {}}, contexts={"a": {"cluster": "c"}}, current="a"))


def test_kubeconfig_env_is_a_merged_list_missing_entries_skipped(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    a = write(tmp_path / "a.yaml", doc(contexts={"hub": {"cluster": "c", "user": "u", "namespace": "payments"}},
                                       current="hub"))
    (tmp_path / "b" / "ca.crt").write_text("x")
    b = write(tmp_path / "b" / "creds.yaml", doc(clusters={"c": {"server": "https://c",
                                                                  "certificate-authority": "ca.crt"}},
                                                  users={"u": {"token": "t"}}))
    env = {"KUBECONFIG": os.pathsep.join([a, str(tmp_path / "missing"), "", b]), "HOME": str(tmp_path)}
    chosen = load_kubeconfig(None, None, env)
    assert (chosen.context, chosen.namespace, chosen.user["token"]) == ("hub", "payments", "t")
    assert chosen.cluster["certificate-authority"] == str(tmp_path / "b" / "ca.crt")
    assert chosen.sources == (a, b)
    # --kubeconfig is one file and wins over KUBECONFIG
    with pytest.raises(KubeconfigError, match="names cluster 'c', which is not in"):
        load_kubeconfig(a, None, env)


def test_no_kubeconfig_at_all_and_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match=r"KUBECONFIG is not set and .*/\.kube/config does not exist"):
        load_kubeconfig(None, None, {"HOME": str(tmp_path)})
    with pytest.raises(KubeconfigError, match="none of the KUBECONFIG files exists"):
        load_kubeconfig(None, None, {"KUBECONFIG": str(tmp_path / "nope"), "HOME": str(tmp_path)})
    with pytest.raises(KubeconfigError, match=r"kubeconfig .*/nope does not exist \(check --member-kubeconfig\)"):
        load_kubeconfig(str(tmp_path / "nope"), flag="--member-kubeconfig")
    bad = tmp_path / "bad"
    bad.write_text("clusters: [\n")
    with pytest.raises(KubeconfigError, match="is not valid YAML"):
        load_kubeconfig(str(bad))
    gone = write(tmp_path / "gone.yaml", doc(clusters={"c": {"server": "https://c", "certificate-authority": "x.crt"}},
                                            contexts={"a": {"cluster": "c"}}, current="a"))
    with pytest.raises(KubeconfigError, match=r"certificate-authority .*/x\.crt does not exist"):
        load_kubeconfig(gone)


def test_namespace_defaults_to_the_context_namespace_then_default(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "config", doc(clusters={"c": {"server": "https://c"}},
                                          contexts={"team": {"cluster": "c", "namespace": "payments"},
                                                    "plain": {"cluster": "c"}}, current="team"))
    monkeypatch.delenv("KUBECONFIG", raising=False)

    def namespace(**kw: Any) -> str:
        args = argparse.Namespace(kubeconfig=path, context=None, namespace=None, **kw)
        hub_config(args)
        return str(args.namespace)

    assert namespace() == "payments"
    args = argparse.Namespace(kubeconfig=path, context="plain", namespace=None)
    hub_config(args)
    assert args.namespace == "default"
    args = argparse.Namespace(kubeconfig=path, context=None, namespace="explicit")
    hub_config(args)
    assert args.namespace == "explicit"  # -n wins


def test_flatten_embeds_certificates_and_minifies(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_bytes(b"CA PEM")
    (tmp_path / "me.crt").write_bytes(b"CERT PEM")
    (tmp_path / "me.key").write_bytes(b"KEY PEM")
    path = write(tmp_path / "config", doc(
        clusters={"c": {"server": "https://c", "certificate-authority": "ca.crt"}, "o": {"server": "https://o"}},
        users={"u": {"client-certificate": "me.crt", "client-key": "me.key"}, "v": {"token": "t"}},
        contexts={"a": {"cluster": "c", "user": "u"}, "b": {"cluster": "o", "user": "v"}}, current="a"))
    flat = flatten(load_kubeconfig(path))
    out = flat.as_dict()
    assert [c["name"] for c in out["clusters"]] == ["c"] and [u["name"] for u in out["users"]] == ["u"]
    assert out["clusters"][0]["cluster"] == {"server": "https://c",
                                             "certificate-authority-data": base64.b64encode(b"CA PEM").decode()}
    assert out["users"][0]["user"] == {"client-certificate-data": base64.b64encode(b"CERT PEM").decode(),
                                       "client-key-data": base64.b64encode(b"KEY PEM").decode()}
    assert portability_problem(flat) is None
    # not flattened, the files of this machine are named
    problem = portability_problem(load_kubeconfig(path))
    assert problem is not None and "certificate-authority" in problem


@pytest.mark.parametrize(("user", "needle"), [
    ({"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "gke-gcloud-auth-plugin"}},
     "exec plugin 'gke-gcloud-auth-plugin'"),
    ({"auth-provider": {"name": "oidc", "config": {}}}, "'oidc' auth provider"),
    ({"tokenFile": "/var/run/token"}, "tokenFile /var/run/token is a file of this machine"),
])
def test_credentials_the_controller_pod_cannot_use_are_refused(user: dict[str, Any], needle: str) -> None:
    config = kubeconfig_from_dict(doc(clusters={"c": {"server": "https://c"}}, users={"u": user},
                                      contexts={"a": {"cluster": "c", "user": "u"}}, current="a"))
    problem = portability_problem(flatten(config))
    assert problem is not None and needle in problem and "\n" not in problem

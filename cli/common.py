"""What the `meshfed` and `kubectl meshfed` commands share: the hub kubeconfig (kubectl's conventions:
--kubeconfig, a merged KUBECONFIG, --context, -n defaulting to the context's namespace), tables,
running one request against the hub, and errors: one line naming what was wrong and what to do, exit
code 1 (2 for usage), a traceback only with --debug (`guard`).

Imports the runtime (federation.kube) lazily; imported by the other cli modules only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

DEFAULT_FLEET_DIR = Path(os.environ.get("MESHFED_FLEET_DIR", Path(__file__).resolve().parents[1] / ".fleet"))


class UserError(Exception):
    """A mistake or a missing object the user can fix: printed as one line, exit code 1."""


class UsageError(UserError):
    """A bad flag combination found after parsing: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`meshfed status: the following arguments are required: name (see
    meshfed status --help)`), exit code 2; subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def add_hub_options(p: argparse.ArgumentParser, *, namespaced: bool = True) -> argparse.ArgumentParser:
    """kubectl's flags for reaching the hub: --kubeconfig, --context and (namespaced commands) -n."""
    if namespaced:
        p.add_argument("-n", "--namespace", default=None,
                       help="namespace (default: the kubeconfig context's namespace, else default)")
    p.add_argument("--kubeconfig", help="hub kubeconfig file (default: KUBECONFIG, every file of the list merged, "
                   "else ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: its current-context)")
    return p


def hub_config(args: argparse.Namespace) -> Any:
    """The hub's Kubeconfig (federation.kube.Kubeconfig) as kubectl would choose it; fills in
    args.namespace from the context when -n was not given."""
    from federation.kube import load_kubeconfig

    config = load_kubeconfig(getattr(args, "kubeconfig", None), getattr(args, "context", None))
    if hasattr(args, "namespace") and not args.namespace:
        args.namespace = config.namespace or "default"
    return config


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def api_error_line(err: Any, server: str, context: str) -> str:
    """One line for a failed hub request (federation.kube.ApiError), with what to do."""
    where = f"the hub API server {server} (context {context!r})"
    if err.status == 0:
        return f"cannot reach {where}: {err.message} (is it running? check --kubeconfig/--context)"
    if err.status == 401:
        return (f"{where} does not accept the kubeconfig's credentials (401 Unauthorized): renew them "
                "(an expired certificate or token?)")
    if err.status == 403:
        return (f"refused by the API server (403 Forbidden): {err.message} (ask a hub admin for that permission; "
                "README: Multi-tenant hub)")
    if err.status == 404 and "the server could not find the requested resource" in err.message:
        return f"{where} does not serve meshfed's API: install the CRDs (kubectl apply -k deploy/)"
    return f"refused by the API server ({err.status} {err.reason}): {err.message}"


def run(args: argparse.Namespace, work: Callable[[Any], Awaitable[str]]) -> None:
    """Connect to the hub (`hub_config`), run `work(client)` and print what it returns; an API error
    becomes one line naming the hub (see `guard`)."""
    from federation.kube import ApiError, KubeClient

    config = hub_config(args)

    async def go() -> str:
        client = await KubeClient.from_kubeconfig(config, "hub", attempts=1)
        try:
            return await work(client)
        except ApiError as err:
            raise UserError(api_error_line(err, client.host, config.context)) from None
        finally:
            await client.close()

    print(asyncio.run(go()))


def _error_line(err: BaseException) -> tuple[str, int]:
    from federation.kube import ApiError, KubeconfigError
    from federation.useractions import ActionError

    if isinstance(err, UsageError):
        return str(err), 2
    if isinstance(err, (UserError, KubeconfigError, ActionError)):
        return str(err), 1
    if isinstance(err, ApiError):
        return str(err), 1
    if isinstance(err, OSError):
        target = f" {err.filename}" if err.filename else ""
        return f"{err.strerror or err}{':' if target else ''}{target}", 1
    return (f"unexpected {type(err).__name__}: {err} (run again with --debug for the traceback, and please "
            "report it)"), 1


def guard(prog: str, argv: list[str], main: Callable[[list[str]], None]) -> None:
    """Run `main(argv)` with one-line errors: `prog: what was wrong (what to do)`, exit code 1 (2 for
    usage); `--debug` anywhere in argv shows the traceback instead."""
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        main(argv)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as err:
        if debug:
            raise
        line, code = _error_line(err)
        print(f"{prog}: {' '.join(line.split())}", file=sys.stderr)
        sys.exit(code)


# ---- argument types (argparse turns their ValueError/ArgumentTypeError into a usage error) ----

_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"label key prefix {prefix!r} is not a DNS subdomain"
    if not _LABEL_NAME.match(name):
        return (f"label key {key!r}: the name must be 1-63 letters, digits, '-', '_' or '.', beginning and "
                "ending with a letter or digit")
    return None


def label_pair(text: str) -> tuple[str, str]:
    """`--label KEY=VALUE` (Kubernetes label syntax)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. --label tier=prod")
    problem = label_key_problem(key)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    if value and not _LABEL_NAME.match(value):
        raise argparse.ArgumentTypeError(f"label value {value!r}: at most 63 letters, digits, '-', '_' or '.', "
                                         "beginning and ending with a letter or digit")
    return key, value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`, else one line saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be {minimum} or more")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def _seconds(text: str, *, zero_ok: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value != value or value == float("inf") or value < 0 or (value == 0 and not zero_ok):
        raise argparse.ArgumentTypeError(f"{text} must be {'0 or more' if zero_ok else 'more than 0'}")
    return value


def positive_float(text: str) -> float:
    return _seconds(text, zero_ok=False)


def non_negative_float(text: str) -> float:
    return _seconds(text, zero_ok=True)


def host_port(text: str) -> str:
    """`[HOST]:PORT` (`0.0.0.0:8081`, `[::]:8081`, `:8081`) for --http-address."""
    _, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT, e.g. 0.0.0.0:8081")
    return text


def http_url(text: str) -> str:
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL, e.g. http://0.0.0.0:8080/healthz")
    return text


def label_value(text: str) -> str:
    """A non-empty label value (the hub id goes into owner labels on member objects)."""
    if not text or not _LABEL_NAME.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a label value: 1-63 letters, digits, '-', '_' or '.', "
                                         "beginning and ending with a letter or digit")
    return text

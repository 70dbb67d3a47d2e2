"""What the `meshfed` and `kubectl meshfed` commands share: the hub kubeconfig, tables, running one
request against the hub with one-line errors.

Imports the runtime (federation.kube) lazily; imported by the other cli modules only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

DEFAULT_FLEET_DIR = Path(os.environ.get("MESHFED_FLEET_DIR", Path(__file__).resolve().parents[1] / ".fleet"))


def hub_kubeconfig(args: argparse.Namespace) -> str:
    path = getattr(args, "kubeconfig", None) or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    path = path.split(os.pathsep)[0]
    if not os.path.exists(path):
        sys.exit(f"meshfed: no kubeconfig for the hub at {path!r} (use --kubeconfig or set KUBECONFIG)")
    return path


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def run(args: argparse.Namespace, work: Callable[[Any], Awaitable[str]]) -> None:
    from federation.kube import ApiError, KubeClient
    from federation.useractions import ActionError

    async def go() -> str:
        client = await KubeClient.from_kubeconfig_file(hub_kubeconfig(args), "hub", attempts=1)
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        print(asyncio.run(go()))
    except ApiError as err:
        sys.exit(f"meshfed: refused by the API server ({err.status} {err.reason}): {err.message}")
    except (UserError, ActionError) as err:
        sys.exit(f"meshfed: {err}")


class UserError(Exception):
    pass

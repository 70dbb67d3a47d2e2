"""`kubectl meshfed …`: the user-facing subcommands of the meshfed CLI as a kubectl plugin.

Imports cli.main (the parser with plugin=True: status and the rollout subcommands) and cli.common (one-line
errors); imported by nothing.
"""

from __future__ import annotations

import sys

from cli.common import guard
from cli.main import build_parser


def main(argv: list[str] | None = None) -> None:
    guard("kubectl meshfed", sys.argv[1:] if argv is None else argv, _run)


def _run(argv: list[str]) -> None:
    args = build_parser("kubectl meshfed", plugin=True).parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()

"""`kubectl meshfed …`: the user-facing subcommands of the meshfed CLI as a kubectl plugin."""

from __future__ import annotations

from federation.cli import build_parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser("kubectl meshfed", plugin=True).parse_args(argv)
    args.func(args)

"""`meshfed controller`'s flags default to what the library runs with when nobody passes them (the
CLI stays import-light, so its defaults are written out there and checked here)."""

from __future__ import annotations

from cli.main import build_parser
from federation.members import VERIFY_INTERVAL


def test_verify_interval_defaults_to_the_registrys() -> None:
    args = build_parser().parse_args(["controller"])
    assert args.verify_interval == VERIFY_INTERVAL == 600.0

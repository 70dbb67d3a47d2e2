"""Rollout spec models and the pure rollout state machine.

Placeholder shape; the rollout issue fills in waves, gates and the state machine.
"""

from __future__ import annotations

from accesspoint.meta import ApiModel


class RolloutSpec(ApiModel):
    pass

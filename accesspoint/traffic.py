"""Locality traffic policy models and the pure compiler to DestinationRule settings.

Placeholder shape; the traffic-policy work (placement issue) fills in the compiler.
"""

from __future__ import annotations

from accesspoint.meta import ApiModel


class TrafficPolicy(ApiModel):
    pass

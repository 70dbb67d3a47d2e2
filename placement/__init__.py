"""MemberCluster and PlacementPolicy API models and the pure cluster-selection functions."""

"""Aggregation strategies: Flower's own plus ours, in one registry."""

from strategies.registry import STRATEGIES, available_strategies, build_strategy

__all__ = ["STRATEGIES", "available_strategies", "build_strategy"]

"""Secure aggregation on Flower's Message API (SecAgg-style masking with Shamir-shared keys).

* :mod:`strategies.secagg.protocol` — pure functions: quantise, PRG, key agreement, masks,
  Shamir sharing, share encryption.
* :mod:`strategies.secagg.client` — the ClientApp's query handlers and train mod.
* :mod:`strategies.secagg.strategy` — :class:`SecureAggregation`, the server-side wrapper
  around FedAvg-family strategies.

See docs/security.md for what it protects against and which combinations are refused.
"""

from strategies.secagg.strategy import SecureAggregation

__all__ = ["SecureAggregation"]

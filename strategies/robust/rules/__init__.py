"""Byzantine-robust aggregation rules on stacked, flattened client updates, one file a rule.

Every rule has the signature ``rule(updates, weights=None, **params) -> Tensor`` where

* ``updates`` is an ``(n_clients, d)`` floating tensor (one flattened update per row),
* ``weights`` is ``None`` (uniform) or an ``(n_clients,)`` tensor of non-negative weights with a
  positive sum (e.g. local example counts),
* rule-specific parameters are keyword-only,

and the result is a ``(d,)`` tensor with the dtype and device of ``updates``.
FLTrust (registered with ``needs_server_update=True``) also takes the server's own update,
``server_update``: pass it by keyword.

Conventions shared by all rules:

* **Byzantine budgets count clients.** Selection, trimming and neighbour counting treat every
  client as one vote, because ``num_byzantine`` bounds the number of adversarial *clients*
  (weights are self-reported and cannot be trusted to bound the adversary's influence).
  Weights enter the *averaging* of whatever survives the robust selection. If all surviving
  clients have weight zero, the survivors are averaged uniformly instead (documented per rule).
* **Numerics.** Reductions (means, sums, norms) accumulate in float64; the result is cast back
  to ``updates.dtype``. Work proceeds in column blocks, so temporaries are ``O(n × block)``
  rather than ``O(n × d)``. Pairwise distances (Krum, Multi-Krum, Bulyan, NNM, geometric
  median) come from a Gram matrix accumulated in float64 from column-block products, which
  run in float64 up to ``kernels.FLOAT64_GRAM_MAX_ENTRIES`` entries (exact for integer-valued
  updates) and in float32 beyond (for float32 updates); if the updates share an offset large
  against their distances, the Gram matrix is recomputed around the medoid update. On the
  float32 path squared distances carry a relative error of order 1e-6, so a Krum-type
  selection between candidates whose scores differ by less than that may differ from exact
  arithmetic (identical updates get identical distances, so their ties are still broken by
  client index). Order
  statistics of unweighted rules are exact: on CPU float tensors NumPy sorts each
  coordinate's ``n`` values in transposed column blocks; other dtypes and devices use a
  comparator network vectorised over coordinates (the same values either way).
* **Determinism.** No rule uses a random number generator; ties are broken by client index.
* **Validation.** Invalid inputs raise ``ValueError`` whose message names the offending
  argument, the value received and the allowed range.

Adding a rule touches one new file here: the function, with its contract in its docstring,
decorated with ``@RULES.register(name, family=..., compatible=..., params=...)`` from
:mod:`strategies.robust.registry` (and ``section=`` a section in the same file for
parameters of its own, set through ``robust.rule-params``); it is built from
:mod:`strategies.robust.checks` and :mod:`strategies.robust.kernels`. Every module of this
package is imported when the registry is first read, so no list needs editing.
"""

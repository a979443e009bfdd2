"""Vertical federated learning (split learning) on Flower's Message API.

``mode = "vertical"``: the ServerApp is the label party (labels, its own columns, its
bottom model and the top model); every ClientApp is a feature party (its columns and its
bottom model). Message types (custom actions of Flower's ClientApp):

* ``query.vertical_psi``   – private set intersection, round 1 (see strategies.vertical.psi)
* ``query.vertical_align`` – which of the party's records are aligned, and their index
* ``train.vertical_step``  – apply the gradient of the previous batch's embedding (if any),
  return the embedding of the next batch (one round trip per batch)
* ``query.vertical_embed`` – embeddings of held-out aligned records (evaluation)
"""

from __future__ import annotations

PSI = "query.vertical_psi"
ALIGN = "query.vertical_align"
STEP = "train.vertical_step"
EMBED = "query.vertical_embed"

#: Keys of records in vertical messages.
META = "vertical-meta"
DATA = "vertical-arrays"
STATE_KEY = "vertical-party"
STATE_MODEL = "vertical-bottom"
STATE_MOMENTUM = "vertical-momentum"


class VerticalError(RuntimeError):
    """Vertical training cannot go on (a party failed, dropped or sent bad data)."""

"""Keys of the records our messages carry, shared by the ServerApp, ClientApp and strategies."""

from __future__ import annotations

#: ConfigRecord in every reply carrying the silo's "partition-id".
META_KEY = "meta"

#: Train-instruction config key (bool): the server asks each silo to report, before it
#: trains, the loss of the received global model on its training data (q-FedAvg needs it).
REPORT_LOSS_BEFORE_KEY = "report-loss-before"
#: Train-reply metric holding that loss (present only when asked for).
LOSS_BEFORE_KEY = "train-loss-before"
#: Train-reply metric: wall seconds the silo spent in its local training (its epochs
#: only, not loading data or messaging), as every silo reports it.
LOCAL_TRAIN_SECONDS_KEY = "local-train-seconds"

"""Live Prometheus metrics of a running federation (the ``prometheus`` metrics sink)."""

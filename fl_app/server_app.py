"""ServerApp: validate the run config, then run the federation (fl_app.federation)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_app import LOG
from fl_app.config import ConfigError, RunConfig
from fl_app.federation import run_federation

app = ServerApp()


def load_config(context: Context) -> RunConfig:
    """The validated run config; on error, log the explanation and stop the run."""
    try:
        return RunConfig.from_flower(context.run_config)
    except ConfigError as exc:
        LOG.error("%s", exc)
        raise


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config."""
    run_federation(grid, load_config(context))

"""ServerApp: validate the run config, then run the federation (fl_app.federation)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fl_app import LOG
from fl_app.config import ConfigError, RunConfig
from fl_app.federation import run_federation
from fl_app.polling import PromptGrid
from fl_app.transport import PackingGrid
from fl_app.vertical.server import run_vertical

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
    """Run the federation described by the run config (vertical mode: split learning,
    this ServerApp being the label party; see fl_app.vertical)."""
    cfg = load_config(context)
    grid = PackingGrid(grid)  # one Array per ArrayRecord on the wire (fl_app.transport)
    if cfg.mode == "vertical":
        run_vertical(grid, cfg)
        return
    if cfg.sampling.reply_poll_interval > 0:  # opt-in; Flower's own loop sleeps 3 s between pulls
        grid = PromptGrid(grid, first_interval=cfg.sampling.reply_poll_interval)
    run_federation(grid, cfg)

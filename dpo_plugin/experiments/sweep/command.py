"""`dpo-plugin sweep --config recipes/experiments/<name>.yaml [--cells PATTERN ...] [--max_minutes M] [--report]`: run
a grid of cells one after another, keep each finished cell in the ledger, and report from whatever is finished.

Before anything runs, every cell's settings are worked out (a bad value is one line naming it); cells whose file holds
the same settings are skipped, the rest run in the grid's order, each in its own folder under `output_dir/cells/`
(what an interrupted attempt left there is cleared first: a cell always runs from its start). `--cells` runs only
the cells whose names match one of the shell patterns, pattern by pattern in the order given (so the cells a claim
needs first can run first); the report still covers the whole grid. `--max_minutes M`
starts no new cell once M minutes have passed and exits 0. SIGTERM or SIGINT stops the running cell at the end of
its optimizer step (it is not recorded) or, between training and the end of its evaluation, once the cell is
recorded; the sweep then writes the report and exits 128 + the signal. A cell whose run diverges (`CellFailed`) is
recorded as failed and the sweep goes on. `--report` only builds the report.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import shutil
import sys
import time
from statistics import mean

from ...training.interruption import Interrupted, StopSignals
from ...utils.errors import ConfigError
from ...utils.run_folder import run_folder
from .grid import CellFailed, CellResult, read_grid
from .ledger import Ledger
from .report import build_report

logger = logging.getLogger("dpo_plugin")
CELL_MINUTES = 20  # the longest a cell should take: a longer one is worth splitting


def sweep(argv: list[str]) -> dict:
    args = _parser().parse_args(argv)
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ConfigError(f"--max_minutes must be > 0; got {args.max_minutes}.")
    grid = read_grid(args.config)
    runner = grid.runner()
    cells = grid.cells()
    ids = [cell.id for cell in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError("two cells of the grid have the same name: give each arm's settings distinct values.")
    settings = {cell.id: runner.settings(cell.values) for cell in cells}
    ledger = Ledger(grid.ledger_dir)
    unfinished = [cell for cell in cells if ledger.finished(cell, settings[cell.id]) is None]
    todo = [cell for cell in _selected(cells, args.cells) if cell in unfinished]
    stopped_by = None
    if not args.report:
        finished, chosen = len(cells) - len(unfinished), " matching --cells" if args.cells else ""
        logger.info("%s: %d of %d cells finished, %d to run%s.", grid.name, finished, len(cells), len(todo), chosen)
        with run_folder(grid.output_dir):  # this sweep's alone (the ledger is shared: a report may be built meanwhile)
            stopped_by = _run(grid, runner, ledger, settings, todo, args.max_minutes)
    records, stale = {}, []
    for cell in cells:
        record = ledger.read(cell)
        if record is not None and ledger.finished(cell, settings[cell.id]) is not None:
            records[cell.id] = record
        elif record is not None:
            stale.append(cell)
    command = f"dpo-plugin sweep --config {args.config} --report"
    markdown, paths = build_report(grid, cells, records, stale, command)
    print(markdown)
    print(f"{len(records)} of {len(cells)} cells finished. Wrote " + ", ".join(map(str, paths)))
    if stopped_by is not None:
        sys.exit(128 + stopped_by)
    return {"finished": len(records), "cells": len(cells)}


def _selected(cells: list, patterns: list[str] | None) -> list:
    """The cells matching the patterns, in pattern order then grid order; all cells when no pattern is given."""
    if not patterns:
        return cells
    chosen = []
    for pattern in patterns:
        matches = [cell for cell in cells if fnmatch.fnmatchcase(cell.id, pattern) and cell not in chosen]
        if not matches and not any(fnmatch.fnmatchcase(cell.id, pattern) for cell in cells):
            raise ConfigError(
                f"--cells {pattern!r} matches no cell of the grid; cell names are <arm>--<setting>--seed<s>."
            )
        chosen += matches
    return chosen


def _run(grid, runner, ledger, settings, todo, max_minutes) -> int | None:
    """Run the cells in `todo`; the signal that stopped the sweep, or None."""
    started, durations = time.monotonic(), []
    with StopSignals() as stop:
        for index, cell in enumerate(todo, 1):
            if stop.received is not None:
                return stop.received
            if max_minutes is not None and time.monotonic() - started >= 60 * max_minutes:
                logger.info("--max_minutes %g reached: starting no new cell.", max_minutes)
                return None
            left = f"; about {mean(durations) * (len(todo) - index + 1) / 60:.0f} min left" if durations else ""
            logger.info("Cell %d of %d to run: %s%s.", index, len(todo), cell.id, left)
            folder = grid.output_dir / "cells" / cell.id
            if folder.exists():
                shutil.rmtree(folder)  # an interrupted attempt's outputs: the cell runs from its start
            cell_started = time.monotonic()
            try:
                result = runner.run(cell.values, folder)
            except Interrupted as interrupted:
                logger.warning("%s: cell %s is not recorded (it runs again from its start).", interrupted, cell.id)
                return interrupted.signal_number
            except CellFailed as failure:
                logger.warning("Cell %s failed: %s. Recorded as failed; it is not run again.", cell.id, failure)
                result = CellResult(metrics={}, seconds={"run": time.monotonic() - cell_started}, failed=str(failure))
            durations.append(time.monotonic() - cell_started)
            ledger.record(cell, settings[cell.id], result)
            logger.info("Cell %s finished in %.1f min: %s.", cell.id, durations[-1] / 60, ledger.path(cell))
            if durations[-1] > 60 * CELL_MINUTES:
                logger.warning("That cell took over %d minutes: consider splitting it.", CELL_MINUTES)
        return stop.received


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpo-plugin sweep", description="Run a grid of experiment cells, each kept when it finishes."
    )
    parser.add_argument(
        "--config", required=True, help="The grid file, e.g. recipes/experiments/online_vs_offline.yaml."
    )
    parser.add_argument(
        "--cells", nargs="+", metavar="PATTERN", help="Run only the cells whose names match (shell patterns, in order)."
    )
    parser.add_argument("--max_minutes", type=float, help="Start no new cell after this many minutes; exit 0.")
    parser.add_argument("--report", action="store_true", help="Only build the report from the finished cells.")
    return parser

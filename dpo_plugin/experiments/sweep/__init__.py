"""`dpo-plugin sweep`: experiments as grids of cells (arm × setting × seed) that survive interruption.

`grid.py` reads the grid file and expands it into cells; `ledger.py` keeps one JSON per finished cell, meant to be
committed; `command.py` runs the unfinished cells one after another; `report.py` builds the table, the plot and the
verdicts from whatever cells exist, with bootstrap intervals over prompts and seeds (`intervals.py`). An experiment
supplies the cells' runner (`grid.CellRunner`); the DPO paper's comparison is one (`comparison/cells.py`).
"""

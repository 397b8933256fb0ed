"""h5ad -> cells -> splits (cells held out, then puzzles per side) -> training/eval records.

Stages (each a function taking a path or table first, keyword-only options after):
- `cells.build_cells`: top-N genes and donor context per cell, from .h5ad files.
- `puzzles.build_puzzles`: CellPuzzles (N cells of distinct types from one donor group).
- `split.split_cells` / `split.audit_overlap`: cells held out (by cell, donor or dataset), then
  train and test puzzles each from their own cells; the independent overlap audit.
- `records.export_split` / `records.import_cellpuzzles` / `records.load_records`: SFT/GRPO/eval
  records, the published CellPuzzles JSON, and the one reader of record files.
"""

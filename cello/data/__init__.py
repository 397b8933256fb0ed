"""h5ad -> cells -> puzzles -> splits -> training/eval records.

Stages (each a function taking a path or table first, keyword-only options after):
- `cells.build_cells`: top-N genes and donor context per cell, from .h5ad files.
- `puzzles.build_puzzles`: CellPuzzles (N cells of distinct types from one donor group).
- `split.split_puzzles` / `split.audit_overlap`: leakage-aware train/test split.
- `records.export_split` / `records.import_cellpuzzles`: SFT/GRPO/eval records, published JSON.
"""

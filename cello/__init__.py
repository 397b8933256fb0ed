"""Cello: train, evaluate and serve LLM cell-type annotators (the Cell-o1 recipe).

The library holds all stage logic; the CLI (`cello`), the KFP components and the
KServe server are thin wrappers around it. Heavy optional dependencies (torch, trl,
kserve, kfp, vllm) are imported inside the functions that need them.
"""

__version__ = "0.1.0"

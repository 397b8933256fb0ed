"""Draw the compiled pipeline's DAG as a PNG for the README.

    python scripts/render_dag.py                       # pipelines/cello.yaml -> pipelines/cello-dag.png
    python scripts/render_dag.py IN.yaml -o OUT.png

Tasks are laid out left to right by dependency depth; a task inside a condition or the loop
is labelled with it (e.g. "deploy [gate-passed]"); only the edges that order tasks are drawn
(the transitive reduction); the exit handler's task, which runs however the run ends, is dashed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_COLORS = {  # task -> colour by what it does
    "data": "#cfe8ff", "train": "#ffe2c6", "eval": "#d8f5d0", "gate": "#fff3b0", "deploy": "#f6d0f0", "exit": "#eeeeee",
}
KIND = {"prepare": "data", "list-inputs": "data", "cells-part": "data", "build-data": "data", "sft-records": "data",
        "distill": "train", "base-model": "train", "sft": "train", "merge": "train", "grpo": "train",
        "evaluate-model": "eval", "evaluate-baseline": "eval", "find-incumbent": "eval", "no-incumbent": "eval",
        "gate": "gate", "deploy": "deploy", "cleanup": "exit"}


def render(ir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    from cello.pipeline.compiler import dag_edges, load_ir

    spec, _ = load_ir(ir)
    nodes, edges, group = dag_edges(spec)
    g = nx.transitive_reduction(nx.DiGraph([e for e in edges if "cleanup" not in e]))  # only the edges that order
    for depth, layer in enumerate(nx.topological_generations(g)):
        for n in layer:
            g.nodes[n]["layer"] = depth
    exit_layer = max(d["layer"] for _, d in g.nodes(data=True)) + 1
    g.add_node("cleanup", layer=exit_layer)
    labels = {n: n.removesuffix("-2") + ("\n[" + group[n] + "]" if group[n] not in ("", "run") else "") for n in g}
    pos = nx.multipartite_layout(g, subset_key="layer", align="vertical", scale=1.0)
    fig, ax = plt.subplots(figsize=(16, 5.5))
    nx.draw_networkx_edges(g, pos, ax=ax, arrows=True, arrowsize=12, edge_color="#777777", node_size=3200,
                           connectionstyle="arc3,rad=0.04")
    for n, (x, y) in pos.items():
        ax.text(x, y, labels[n], ha="center", va="center", fontsize=8.5,
                bbox={"boxstyle": "round,pad=0.45", "fc": STAGE_COLORS[KIND[n.removesuffix("-2")]],
                      "ec": "#555555", "ls": "--" if n == "cleanup" else "-"})
    ax.set_title("Cello pipeline (pipelines/cello.yaml): data -> [distill] -> SFT -> merge -> GRPO -> evaluate -> gate "
                 "-> deploy; cleanup is the exit handler", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ir", nargs="?", type=Path, default=REPO / "pipelines" / "cello.yaml")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "pipelines" / "cello-dag.png")
    args = parser.parse_args()
    print(f"{args.ir} -> {render(args.ir, args.out)}")


if __name__ == "__main__":
    main()

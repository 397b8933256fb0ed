"""The prompt template (`prompt:` in params.yaml): how a puzzle becomes chat messages.

Puzzles are stored structured (cells, genes, context, candidates); the chat text is made
from this template at export/eval/serve time, so a prompt change needs no data rebuild.
`parse_user` inverts `render_user` (and reads the published CellPuzzles prompts, which share
its shape), so published data can be imported back into the structured form.

The answer format is the paper's: reasoning in <think>...</think>, then
<answer>type of cell 1 | type of cell 2 | ...</answer>.

Why here, with the configs: the template is settings (plain text fields) plus the pure text
rules that apply them, and every stage from data to serving renders with it; a config may not
import stage code, so the template sits at the bottom and `cello.data.prompt` re-exports it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from cello.config.base import Section

DEFAULT_SYSTEM = (
    "You are an expert assistant specialized in cell type annotation. "
    "You will be given a batch of N cells from the same donor, where each cell represents a "
    "unique cell type. For each cell, the top expressed genes are provided in descending order "
    "of expression. Using both the gene expression data and donor information, determine the "
    "correct cell type for each cell. You will also receive a list of N candidate cell types, "
    "and each candidate must be assigned to exactly one cell. Ensure that you consider all "
    "cells and candidate types together, rather than annotating each cell individually. "
    "Include your detailed reasoning within <think> and </think> tags, and provide your final "
    "answer within <answer> and </answer> tags. The final answer should be a single string "
    "listing the assigned cell types in order, separated by ' | '."
)
DEFAULT_INSTRUCTION = "Match the cells above to one of the following cell types:"
PROFILES = ("cello", "cell-o1")


class PromptTemplate(Section):
    """How a puzzle becomes chat messages. Every field is plain text with no logic."""

    profile: Literal["cello", "cell-o1"] = Field(
        "cello",
        description=(
            "Wording of the context: 'cello' (clean sentences, no Context line when there is none) or "
            "'cell-o1' (the original pipeline's wording and spacing, byte for byte, for its models and data)."
        ),
    )
    layout: Literal["system-user", "user-turn"] = Field(
        "system-user",
        description=(
            "How the prompt is laid out: 'system-user' (a system message, then the user message: how SFT trains) "
            "or 'user-turn' (one user message: the question, a newline, the system text: how the released GRPO "
            "and evaluation scripts prompt, so how ncbi/Cell-o1 was trained last and scored)."
        ),
    )
    system: str = Field(DEFAULT_SYSTEM, description="System message.")
    cell_line: str = Field("Cell {index}: {genes}", description="One line per cell; {index} is 1-based.")
    gene_separator: str = Field(", ", description="Between genes on a cell line.")
    instruction: str = Field(DEFAULT_INSTRUCTION, description="Line before the candidate list.")
    think_placeholder: str = Field(
        "Each cell's top genes point to one candidate; every candidate is used exactly once.",
        description="Reasoning written into format-only SFT targets when no trace exists.",
    )

    def render_user(self, context: str, cell_genes: Sequence[Sequence[str]], candidates: Sequence[str]) -> str:
        """The user message: context sentence, one line per cell, then the candidates."""
        cells = "\n".join(
            self.cell_line.format(index=i, genes=self.gene_separator.join(genes))
            for i, genes in enumerate(cell_genes, 1)
        )
        head = f"Context: {context}\n\n" if context or self.profile == "cell-o1" else ""
        return f"{head}{cells}\n\n{self.instruction}\n" + "\n".join(candidates)

    def messages(self, context: str, cell_genes: Sequence[Sequence[str]], candidates: Sequence[str]) -> list[dict]:
        """The prompt of a puzzle (GRPO, eval and serving), in this template's layout."""
        return self.arrange([
            {"role": "system", "content": self.system},
            {"role": "user", "content": self.render_user(context, cell_genes, candidates)},
        ])

    def arrange(self, messages: Sequence[dict]) -> list[dict]:
        """`messages` (a system message, then user turns) in this template's layout: under 'user-turn'
        the system text follows the first user message after a newline, as the released evaluation does."""
        messages = [dict(m) for m in messages]
        if self.layout == "system-user" or not messages or messages[0].get("role") != "system":
            return messages
        system, rest = messages[0], messages[1:]
        if not rest or rest[0].get("role") != "user":
            return messages
        rest[0]["content"] = f"{rest[0]['content']}\n{system['content']}"
        return rest

    def render_answer(self, answer: Sequence[str], reasoning: str | None = None) -> str:
        """The assistant message in the paper's format."""
        think = self.think_placeholder if reasoning is None else reasoning
        return f"<think>{think}</think>\n<answer>{' | '.join(answer)}</answer>"

    def parse_user(self, text: str) -> tuple[str, list[list[str]], list[str]]:
        """Invert `render_user`: (context, cell_genes, candidates). Raises ValueError if the shape differs."""
        context = ""
        body = text.lstrip()
        if body.startswith("Context:"):
            context, _, body = body.partition("\n\n")
            context = context[len("Context:"):]
            # cell-o1 keeps the context verbatim (its trailing space), so it renders back identically
            context = context[1:] if self.profile == "cell-o1" and context.startswith(" ") else context.strip()
        cells_part, sep, cand_part = body.partition(self.instruction)
        if not sep:
            msg = f"the user message has no line {self.instruction!r} before the candidate list"
            raise ValueError(msg)
        line_re = re.compile(r"^\s*Cell\s*(\d+)\s*:\s*(.*)$")
        cell_genes = []
        for line in cells_part.strip().splitlines():
            m = line_re.match(line)
            if not m:
                msg = f"cannot read the cell line {line!r} (expected 'Cell <i>: GENE, GENE, ...')"
                raise ValueError(msg)
            genes = [g.strip() for g in m.group(2).split(self.gene_separator.strip()) if g.strip()]
            cell_genes.append(genes)
        candidates = [c.strip() for c in cand_part.strip().splitlines() if c.strip()]
        if not cell_genes or not candidates:
            msg = "the user message holds no cells or no candidates"
            raise ValueError(msg)
        return context, cell_genes, candidates

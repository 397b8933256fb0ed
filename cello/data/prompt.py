"""The prompt template, where the data stage and the stages above it import it from.

It is defined in `cello.config.prompt`: the template is a section of params.yaml (`prompt:`),
and a config may not import the data layer.
"""

from __future__ import annotations

from cello.config.prompt import PromptTemplate

__all__ = ["PromptTemplate"]

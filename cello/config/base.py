"""What every config section shares: the base model, and field rules used by several stages.

A section refuses unknown keys (`extra="forbid"`), so a misspelt key in params.yaml is an
error that names it, not a silently ignored setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# A Kubernetes name that is also a DNS-1035 label (services, InferenceServices, namespaces).
DNS_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"


class Section(BaseModel):
    """A section of params.yaml: typed fields, unknown keys refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

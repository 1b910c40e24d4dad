"""Baseline (methods.md §3.1): joint training, concat fusion, one multimodal cross-entropy."""
from __future__ import annotations

from bbench.methods.base import Method
from bbench.methods.facts import Family
from bbench.methods.registry import register_method


@register_method()
class Baseline(Method):
    """The defaults of Method are exactly the Baseline step; nothing to override."""

    name = "Baseline"
    family = Family.REFERENCE
    comparison_reference = True

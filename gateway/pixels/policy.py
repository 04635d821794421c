"""What the pixel stage is told: the device rules, what to do with an at-risk instance no rule
matches, and the value blanked regions get (``[pixels]`` in the settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.pixels.rules import RuleSet

Unmatched = Literal["quarantine", "ocr", "pass"]


@dataclass(frozen=True)
class PixelPolicy:
    rules: RuleSet
    unmatched: Unmatched = "quarantine"
    fill: int = 0

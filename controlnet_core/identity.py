"""Identity: what a control file is, as `identify` reports it (no tensor data read)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Identity:
    system: str                # common name: "ControlNet", "T2I-Adapter", "ControlNeXt", "Union", "LLLite", …
    variant: str               # "full", "light", "XL", "diff", "style", "SDXL module"…
    layout: str                # "ldm", "diffusers", "original"…
    family: str | None         # base model: "sd1", "sd2", "sdxl", "sd3", "flux", "hunyuandit"; None if undecided
    runs_here: bool = True     # this pack loads and runs it
    advice: str = ""           # for files it does not run: what to use instead
    details: dict = field(default_factory=dict)  # system-specific facts for `inspect`

    @property
    def title(self) -> str:
        return f"{self.system} ({self.variant})" if self.variant and self.variant != self.system else self.system

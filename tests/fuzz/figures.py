"""The RPC fuzz test's figures, per database, for the run's summary line."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Figures:
    database: str
    services: list[str] = field(default_factory=list)
    rpcs: int = 0
    examples: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    not_served: list[str] = field(default_factory=list)

    @property
    def internal(self) -> int:
        return self.codes.get("INTERNAL", 0) + self.codes.get("UNKNOWN", 0)

    def line(self) -> str:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(self.codes.items()))
        unserved = f"; not served here: {', '.join(self.not_served)}" if self.not_served else ""
        return (
            f"rpc fuzz [{self.database}]: {self.rpcs} RPCs of {len(self.services)} services "
            f"({', '.join(self.services)}), {self.examples} examples, "
            f"INTERNAL/UNKNOWN {self.internal} (codes: {codes}){unserved}"
        )


RECORDED: list[Figures] = []

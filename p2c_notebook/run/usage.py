"""Token usage and cost, with a price table where an unknown model means "cost unknown"."""

from __future__ import annotations

from dataclasses import dataclass

# USD per million tokens: (input, cached input, output). Public list prices; extend via settings.
PRICES: dict[str, tuple[float, float, float]] = {
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
    "o3": (2.00, 0.50, 8.00),
    "o3-mini": (1.10, 0.55, 4.40),
    "o4-mini": (1.10, 0.275, 4.40),
    "gpt-5": (1.25, 0.125, 10.00),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
    "scripted": (0.0, 0.0, 0.0),
}


@dataclass(frozen=True)
class Usage:
    """Tokens of one call or a sum of calls; cost is None when any part's price is unknown.

    `estimated` is true when any part was counted offline because the server reported no usage.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    calls: int = 0
    cost: float | None = 0.0
    estimated: bool = False

    def __add__(self, other: Usage) -> Usage:
        cost = None if self.cost is None or other.cost is None else self.cost + other.cost
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.calls + other.calls,
            cost,
            self.estimated or other.estimated,
        )

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "calls": self.calls,
            "cost_usd": None if self.cost is None else round(self.cost, 6),
        }
        if self.estimated:
            data["estimated"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Usage:
        def num(key: str) -> int:
            value = data.get(key, 0)
            return int(value) if isinstance(value, (int, float)) else 0

        cost = data.get("cost_usd")
        return cls(
            num("prompt_tokens"),
            num("completion_tokens"),
            num("cached_tokens"),
            num("calls"),
            float(cost) if isinstance(cost, (int, float)) else None,
            data.get("estimated") is True,
        )

    def describe(self) -> str:
        cost = "cost unknown" if self.cost is None else f"${self.cost:.4f}"
        cached = f" ({self.cached_tokens:,} cached)" if self.cached_tokens else ""
        about = "~" if self.estimated else ""
        return f"{about}{self.prompt_tokens:,} in{cached} / {about}{self.completion_tokens:,} out, {cost}" + (
            " (estimated: the server reported no usage)" if self.estimated else ""
        )


def price_for(
    model: str, extra: dict[str, tuple[float, float, float]] | None = None
) -> tuple[float, float, float] | None:
    """Look a model up by exact name, then by its longest known prefix (dated snapshots)."""
    table = {**PRICES, **(extra or {})}
    if model in table:
        return table[model]
    name = model.split("/")[-1]
    matches = [key for key in table if name == key or name.startswith(key + "-")]
    return table[max(matches, key=len)] if matches else None


def cost_of(
    model: str,
    prompt: int,
    completion: int,
    cached: int,
    extra: dict[str, tuple[float, float, float]] | None = None,
) -> float | None:
    price = price_for(model, extra)
    if price is None:
        return None
    inp, cached_price, out = price
    fresh = max(0, prompt - cached)
    return (fresh * inp + cached * cached_price + completion * out) / 1_000_000

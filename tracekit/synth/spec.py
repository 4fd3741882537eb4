"""Routing specs for ``tracekit synth --routing SPEC``: uniform, zipf:ALPHA, balanced, fitted:PATH."""

from __future__ import annotations

from dataclasses import dataclass

from tracekit.errors import UnknownNameError, UsageError

KINDS = ("uniform", "zipf", "balanced", "fitted")


@dataclass(frozen=True, kw_only=True)
class RoutingSpec:
    """A parsed routing spec."""

    #: uniform, zipf, balanced or fitted.
    kind: str
    #: Zipf exponent (zipf only): expert of popularity rank r gets logit -alpha * ln(r).
    alpha: float | None = None
    #: Statistics directory or trace to fit (fitted only).
    source: str | None = None

    def __str__(self) -> str:
        if self.kind == "zipf":
            return f"zipf:{self.alpha:g}"
        if self.kind == "fitted":
            return f"fitted:{self.source}"
        return self.kind


def parse_spec(text: str) -> RoutingSpec:
    """Parse ``uniform``, ``zipf:ALPHA``, ``balanced`` or ``fitted:STATS_OR_TRACE``."""
    kind, _, arg = text.strip().partition(":")
    kind = kind.lower()
    if kind not in KINDS:
        raise UnknownNameError(
            "routing spec", kind, KINDS, hint="e.g. --routing zipf:1.2 or fitted:STATS_DIR"
        )
    if kind == "zipf":
        try:
            alpha = float(arg)
        except ValueError:
            raise UsageError(f"--routing {text!r}: zipf needs a number, e.g. zipf:1.2") from None
        if not 0 <= alpha <= 50:
            raise UsageError(f"--routing {text!r}: zipf exponent must be in 0..50")
        return RoutingSpec(kind="zipf", alpha=alpha)
    if kind == "fitted":
        if not arg:
            raise UsageError(
                f"--routing {text!r}: fitted needs a path, e.g. fitted:sample_traces/tiny-deepseek-v3/decode"
            )
        return RoutingSpec(kind="fitted", source=arg)
    if arg:
        raise UsageError(f"--routing {text!r}: {kind} takes no argument")
    return RoutingSpec(kind=kind)

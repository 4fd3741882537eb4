"""Deployment planning over the replay's fast path: ``tracekit plan`` (docs/plan.md)."""

from tracekit.plan.config import load_plan_toml
from tracekit.plan.output import write_plan
from tracekit.plan.search import Grid, PlanInputs, PlanResult, Sla, pareto_front, plan

__all__ = ["Grid", "PlanInputs", "PlanResult", "Sla", "load_plan_toml", "pareto_front", "plan", "write_plan"]

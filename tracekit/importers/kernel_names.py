"""Kernel names taken apart: namespace, function, template arguments, parameters.

Profilers record demangled C++ names (``void acme::ep::internode::dispatch<8, 768>(int4*, ...)``),
bare names (``fused_moe_kernel``, ``nvjet_tst_192x192_...``) or operator names (``aten::addmm``).
:func:`parse_kernel_name` splits them at the brackets of depth 0 so that rules can look at what a
kernel *is* (its function), not at whose namespace it lives in. It never fails: a name whose brackets
do not balance (a truncated name) keeps its whole text as the function.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

_OPEN = {"<": ">", "(": ")", "[": "]"}
_CLOSE = {v: k for k, v in _OPEN.items()}


@dataclass(frozen=True, kw_only=True)
class KernelName:
    """The parts of one kernel name. Every field is text ('' when absent)."""

    #: The name as recorded.
    raw: str
    #: Last component of the qualified name, without template arguments: ``dispatch``.
    function: str
    #: Enclosing namespaces and classes joined by ``::``: ``acme::ep::internode``.
    namespace: str
    #: Text inside the top-level template brackets of the function (``8, 768``), '' without.
    template: str
    #: Text inside the parameter list, '' without.
    args: str


def _depth_scan(text: str) -> list[int] | None:
    """Bracket depth before each character; None when the brackets do not balance."""
    depth = 0
    out = []
    stack: list[str] = []
    for i, ch in enumerate(text):
        out.append(depth)
        if ch in _OPEN:
            # '->' and '<<'/'>>' operators do not occur inside kernel names except as 'operator<'
            if ch == "<" and text[max(0, i - 8) : i].endswith("operator"):
                continue
            stack.append(ch)
            depth += 1
        elif ch in _CLOSE:
            if ch == ">" and i > 0 and text[i - 1] == "-":  # '->' inside a name (memcpy labels)
                continue
            if not stack or stack[-1] != _CLOSE[ch]:
                return None
            stack.pop()
            depth -= 1
    return out if not stack else None


def _split_top(text: str, depths: list[int], sep: str) -> list[str]:
    parts, start = [], 0
    i = 0
    while i < len(text):
        if depths[i] == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return parts


@lru_cache(maxsize=65536)
def parse_kernel_name(name: str) -> KernelName:
    """Split ``name`` into namespace, function, template arguments and parameters."""
    text = name.strip()
    depths = _depth_scan(text)
    if depths is None or not text:
        return _parse_unbalanced(name, text)
    args = ""
    # the parameter list: the last top-level (...) group that ends the name
    if text.endswith(")"):
        open_at = max((i for i, ch in enumerate(text) if ch == "(" and depths[i] == 0), default=-1)
        if open_at > 0:
            args = text[open_at + 1 : -1]
            text = text[:open_at].rstrip()
            depths = depths[:open_at]
    # drop a return type: the last top-level space-separated word is the qualified name
    words = [w for w in _split_top(text, depths, " ") if w]
    qualified = words[-1] if words else text
    qd = _depth_scan(qualified) or [0] * len(qualified)
    template = ""
    if qualified.endswith(">"):
        open_at = next((i for i, ch in enumerate(qualified) if ch == "<" and qd[i] == 0), -1)
        if open_at > 0:
            template = qualified[open_at + 1 : -1]
            qualified = qualified[:open_at]
            qd = qd[:open_at]
    components = [c for c in _split_top(qualified, qd, "::") if c]
    if not components:
        return KernelName(raw=name, function=qualified, namespace="", template=template, args=args)
    function = components[-1]
    # a template on an inner component (``ns::cls<T>::run``) is kept with its namespace
    return KernelName(
        raw=name,
        function=function,
        namespace="::".join(components[:-1]),
        template=template,
        args=args,
    )


def _parse_unbalanced(name: str, text: str) -> KernelName:
    """A name cut short (or otherwise unbalanced): the qualified name before the first bracket."""
    cut = min((i for i in (text.find("<"), text.find("(")) if i >= 0), default=len(text))
    words = text[:cut].split()
    qualified = words[-1] if words else text
    components = [c for c in qualified.split("::") if c]
    if not components:
        return KernelName(raw=name, function=text, namespace="", template="", args="")
    return KernelName(
        raw=name, function=components[-1], namespace="::".join(components[:-1]), template="", args=""
    )

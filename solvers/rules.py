"""Rules a sampler declares as small expressions: its NFE count and its convergence order.

A rule is Python expression text over named variables, e.g. ``"2*N - 1 if to_zero else 2*N"``.
The text is both the code that is evaluated and the prose ``nfebench list`` and the README print,
so the two cannot drift apart. It is parsed once, checked to use only arithmetic, comparisons,
boolean logic, conditional expressions, ``min``/``max`` and the variables it was declared with,
and evaluated without builtins.
"""
from __future__ import annotations

import ast
from typing import Any, Iterable, Mapping

__all__ = ["Rule"]

_ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Name, ast.Load, ast.Constant,
    ast.Call, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.USub, ast.Not, ast.And, ast.Or,
    ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Tuple,
)
_FUNCTIONS = {"min": min, "max": max}


class Rule:
    """A validated expression over ``variables``; call it with their values."""

    def __init__(self, text: str, variables: Iterable[str], what: str = "rule"):
        self.text = " ".join(str(text).split())
        self.variables = frozenset(variables)
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as e:
            raise ValueError(f"{what} {self.text!r} is not an expression: {e.msg}") from None
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_NODES):
                raise ValueError(f"{what} {self.text!r} uses {type(node).__name__}; rules may use arithmetic, "
                                 f"comparisons, and/or/not, 'a if c else b', min and max")
            if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS):
                raise ValueError(f"{what} {self.text!r} calls something other than min or max")
            if isinstance(node, ast.Name) and node.id not in self.variables and node.id not in _FUNCTIONS:
                raise ValueError(f"{what} {self.text!r} uses {node.id!r}; it may use {', '.join(sorted(self.variables))}")
        self._code = compile(tree, f"<{what}>", "eval")
        #: the variables the expression uses
        self.names = frozenset(node.id for node in ast.walk(tree) if isinstance(node, ast.Name)) - set(_FUNCTIONS)

    def __call__(self, values: Mapping[str, Any]) -> Any:
        return eval(self._code, {"__builtins__": {}, **_FUNCTIONS}, dict(values))  # noqa: S307 - validated above

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Rule({self.text!r})"

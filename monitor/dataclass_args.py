"""Command-line flags generated from config dataclasses, so each option is declared (and documented) once.

A field ``batch_tokens: int = 2048`` with the attribute docstring "Tokens per step." under it becomes
``--batch-tokens INT`` with that help text and default.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import typing


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right under each field) of a dataclass."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "") -> None:
    """Add one ``--flag`` per field of ``cls`` (bools become ``--flag/--no-flag``)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + prefix + f.name.replace("_", "-")
        typ = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{docs.get(f.name, '')} (default: {default})"
        if typ is bool:
            parser.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            base = next((a for a in typing.get_args(typ) if a is not type(None)), typ) if typing.get_args(typ) else typ
            parser.add_argument(flag, dest=prefix + f.name, type=base, default=default, help=help_text,
                                metavar=getattr(base, "__name__", "VALUE").upper())


def dataclass_from_args(cls: type, args: argparse.Namespace, *, prefix: str = ""):
    """Build ``cls`` from the parsed flags that ``add_dataclass_args`` added."""
    return cls(**{f.name: getattr(args, prefix + f.name) for f in dataclasses.fields(cls)})

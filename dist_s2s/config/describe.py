"""The config's own description of its keys: each field's docstring, for `--help`."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap

from dist_s2s.config.schema import Config


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field, read from source, for `--help`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = following.value.value.strip()
    return docs


def describe_options() -> str:
    """Every `--section.key` with its default and docstring, for the CLI's help text."""
    lines = []
    defaults = Config()
    for section in dataclasses.fields(Config):
        section_value = getattr(defaults, section.name)
        docs = field_docs(type(section_value))
        for item in dataclasses.fields(section_value):
            default = getattr(section_value, item.name)
            listed_sections = isinstance(default, list) and default and dataclasses.is_dataclass(default[0])
            shown = "[...]" if listed_sections else default
            lines.append(f"  --{section.name}.{item.name}={shown}\n      {docs.get(item.name, '')}")
    return "\n".join(lines)

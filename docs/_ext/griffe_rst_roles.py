"""A griffe extension for the API reference (mkdocs.yml loads it; not part of the site).

The docstrings in src/ are written for readers of the source, in the reST habits of
Python projects: ``:class:`Loop``` roles, and ``#:`` comments documenting attributes.
Rendered as Markdown, a role would show up verbatim, and a ``#:`` comment not at all:

- a role (``:class:`X```, ``:meth:`~a.b```, ...) becomes inline code (``X``, ``b``);
- an attribute without a docstring gets the ``#:`` comment lines just above it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|exc|mod|obj|const):`~?([^`]+)`")


def _unrole(text: str) -> str:
    def code(match: re.Match[str]) -> str:
        target = match.group(1)
        # :meth:`~a.b` shows only the last part, as Sphinx does.
        if match.group(0).split("`", 1)[1].startswith("~"):
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    return ROLE.sub(code, text)


class RstRoles(griffe.Extension):
    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is None and obj.is_attribute:
            comment = _comment_above(obj)
            if comment:
                obj.docstring = griffe.Docstring(comment, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = _unrole(obj.docstring.value)


def _comment_above(obj: griffe.Object) -> str:
    """The ``#:`` lines right above the attribute's first line, without the markers."""
    if obj.lineno is None or obj.filepath is None or isinstance(obj.filepath, list):
        return ""
    try:
        lines = obj.lines_collection[obj.filepath]
    except KeyError:
        return ""
    found: list[str] = []
    index = obj.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.append(lines[index].strip()[2:].strip())
        index -= 1
    return " ".join(reversed(found))

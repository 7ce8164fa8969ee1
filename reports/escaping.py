"""Markdown escaping for user-supplied strings (study and run names, file names, class names, errors).

Why: report.md is also rendered to report.html, so a name such as ``[r](javascript:alert(1))`` or a
file name holding backticks must reach the page as text, never as a link, a code span that swallows
its neighbours, or raw HTML.
"""

from __future__ import annotations

import re

# The characters Python-Markdown (and CommonMark) read as syntax inside a line and let a backslash escape;
# "<" and "&" cannot be escaped so, and become entities (no raw HTML, no autolink).
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()>#+\-.!|])")
_ENTITIES = {"&": "&amp;", "<": "&lt;"}


def md_text(value: object) -> str:
    """``value`` as literal Markdown text: every syntax character backslash-escaped, line breaks as spaces."""
    text = " ".join(str(value).splitlines())
    text = re.sub(r"[&<]", lambda m: _ENTITIES[m.group()], text)
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def md_code(value: object) -> str:
    """``value`` as one inline code span whatever it holds: the fence is one backtick longer than the
    longest run inside, padded with spaces when the text starts or ends with a backtick."""
    text = " ".join(str(value).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"

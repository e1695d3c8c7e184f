"""Text shared by reports, tables and error messages: Markdown tables, an exception's first line, kwargs, and
text made safe to print."""
import unicodedata
from typing import Any, Iterable, Mapping, Sequence

__all__ = ['markdown_table', 'first_line', 'format_kwargs', 'printable', 'HIDDEN_CATEGORIES']

# Unicode categories of characters that change what a terminal or a table shows without being seen themselves:
# control, format (zero-width, bidi overrides, the BOM), line and paragraph separators, surrogates, private use,
# unassigned
HIDDEN_CATEGORIES = frozenset({'Cc', 'Cf', 'Zl', 'Zp', 'Cs', 'Co', 'Cn'})


def printable(text: str) -> str:
    """``text`` with every hidden character but the newline escaped (``\\x1b``, ``\\u202e``), for a terminal."""
    if text.isprintable():
        return text
    return ''.join(c if c == '\n' or unicodedata.category(c) not in HIDDEN_CATEGORIES
                   else c.encode('unicode_escape').decode('ascii') for c in text)


def _cell(value: Any) -> str:
    if value is None:
        return ''
    if isinstance(value, float):
        return f'{value:.4g}'
    return str(value).replace('|', '/').replace('\n', ' ')


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table: ``header`` names the columns, each row gives one value per column.

    Strings are written as they are (format numbers before passing them to control their digits); other floats get
    4 significant digits; ``None`` is an empty cell; ``|`` inside a cell becomes ``/``.
    """
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        cells = list(row)
        if len(cells) != len(header):
            raise ValueError(f'a table row has {len(cells)} cells for {len(header)} columns: {cells!r}')
        lines.append('| ' + ' | '.join(_cell(c) for c in cells) + ' |')
    return '\n'.join(lines)


def first_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first sentence`` of an exception: enough to tell what broke, without a library's advice paragraphs."""
    text = [line for line in str(e).strip().splitlines() if line.strip()]
    first = text[0].split('. ')[0].rstrip('.')[:limit] if text else ''
    return f'{type(e).__name__}: {first}' if first else type(e).__name__


def format_kwargs(kwargs: Mapping[str, Any]) -> str:
    """``k=v, ...`` as in a call, or ``default arguments`` when there are none."""
    return ', '.join(f'{k}={v!r}' for k, v in kwargs.items()) or 'default arguments'

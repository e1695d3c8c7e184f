"""Text shared by reports, tables and error messages: Markdown tables, an exception's first line, kwargs."""
from typing import Any, Iterable, Mapping, Sequence

__all__ = ['markdown_table', 'first_line', 'format_kwargs']


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

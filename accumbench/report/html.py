"""The report page: one self-contained HTML file, readable offline.

Figures are embedded as base64 PNG (the SVG and PNG files lie beside the page, linked). Every
table cell that shows a number keeps the raw value in `data-value`, so the page can be checked
against the records. A small script marks `<body>` with how many images it has and how many
failed to load (`data-images`, `data-broken-images`): a headless browser test reads it.
"""

from __future__ import annotations

import base64
import re
from html import escape
from typing import Sequence

from accumbench.report.sections import FigureBlock, SectionReport
from accumbench.report.tables import Table

STYLE = """
:root { --ink: #1f2328; --muted: #57606a; --line: #d0d7de; --head: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); margin: 0; background: #fff; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 22px; margin: 48px 0 8px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 18px; margin: 32px 0 8px; }
.sub { color: var(--muted); margin: 0 0 16px; }
nav { background: var(--head); border: 1px solid var(--line); border-radius: 6px;
      padding: 10px 16px; margin: 16px 0; font-size: 14px; }
nav ul { margin: 4px 0; padding-left: 20px; }
nav a, figcaption a { color: var(--accent); text-decoration: none; }
.notes { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 16px;
         margin: 16px 0; }
.notes ul { margin: 4px 0; padding-left: 20px; }
figure { margin: 8px 0 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 14px; margin: 6px 0 0; max-width: 980px; }
.findings { margin: 8px 0; padding-left: 20px; }
.findings li { margin: 2px 0; }
.scroll { max-height: 460px; overflow: auto; border: 1px solid var(--line); border-radius: 4px;
          margin: 10px 0; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left;
         white-space: nowrap; }
th { background: var(--head); position: sticky; top: 0; font-weight: 600; white-space: normal;
     vertical-align: bottom; }
tbody tr:nth-child(even) { background: #fbfcfd; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.status-oom { color: #cf222e; font-weight: 600; }
td.status-error { color: #bc4c00; font-weight: 600; }
td.wrap { white-space: normal; }
dl.env { display: grid; grid-template-columns: repeat(3, max-content minmax(0, 1fr));
         gap: 4px 14px; font-size: 13px; background: var(--head); border: 1px solid var(--line);
         border-radius: 6px; padding: 10px 14px; margin: 8px 0 0; }
dl.env dt { color: var(--muted); }
dl.env dd { margin: 0; overflow-wrap: anywhere; }
.findings-title { margin: 12px 0 0; font-weight: 600; font-size: 14px; }
.absent { color: var(--muted); font-size: 14px; }
.noise { font-size: 14px; background: #fff8e1; padding: 6px 10px; border-left: 3px solid #f0b400; }
code { font: 13px ui-monospace, "DejaVu Sans Mono", monospace; background: var(--head);
       padding: 0 3px; border-radius: 3px; }
"""

# Sets data-images / data-broken-images on <body> once everything has loaded.
SCRIPT = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !img.complete || img.naturalWidth === 0; });
  document.body.dataset.images = String(images.length);
  document.body.dataset.brokenImages = String(broken.length);
});
"""

WRAP_COLUMNS = {"message", "causes", "worst parameters", "details"}


def prose(text: str) -> str:
    """Escape `text` for HTML and show its `backticked` words as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def render_table(table: Table, table_id: str, css_class: str = "") -> str:
    """A `<table>`: header row, then cells; numbers right-aligned with `data-value` raw values."""
    head = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for column, cell in zip(table.columns, row):
            classes = []
            if cell.numeric:
                classes.append("num")
            if column == "status" and cell.text in ("oom", "error"):
                classes.append(f"status-{cell.text}")
            if column in WRAP_COLUMNS:
                classes.append("wrap")
            attrs = f' class="{" ".join(classes)}"' if classes else ""
            if cell.numeric:
                attrs += f' data-value="{escape(repr(cell.value))}"'
            cells.append(f"<td{attrs}>{escape(cell.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    header = f"<thead><tr>{head}</tr></thead>" if any(table.columns) else ""
    cls = f' class="{css_class}"' if css_class else ""
    return (f'<table id="{escape(table_id)}" data-table="{escape(table.name)}"{cls}>{header}'
            f"<tbody>{''.join(body)}</tbody></table>")


def render_environment(table: Table, element_id: str) -> str:
    """The environment (key, value) rows as a compact three-column definition list."""
    items = "".join(f"<dt>{escape(row[0].text)}</dt><dd>{escape(row[1].text)}</dd>"
                    for row in table.rows)
    return f'<dl class="env" id="{escape(element_id)}">{items}</dl>'


def _block(section: SectionReport, block: FigureBlock) -> str:
    kind = block.kind
    anchor = f"{section.slug}-{kind.name}"
    parts = [f'<h3 id="{anchor}">{escape(kind.title)}</h3>']
    if block.png is None:
        parts.append(f'<p class="absent">No figure: {prose(kind.absent)}. The numbers:</p>')
    else:
        data = base64.b64encode(block.png).decode("ascii")
        if block.svg_beside:
            svg = f'<a href="{escape(block.file)}.svg">SVG</a>'
        else:
            svg = f'<a href="{escape(kind.name)}.svg">SVG (all sections)</a>'
        links = f' <a href="{escape(block.file)}.png">PNG</a> · {svg}'
        parts += [
            "<figure>",
            f'<img src="data:image/png;base64,{data}" alt="{escape(kind.title)}: '
            f'{escape(section.title)}" data-figure="{escape(kind.name)}">',
            f"<figcaption><strong>What this shows.</strong> {prose(kind.caption)}{links}"
            "</figcaption></figure>",
        ]
    if block.findings:
        items = "".join(f"<li>{escape(s)}</li>" for s in block.findings)
        parts.append(f'<p class="findings-title">In these results</p><ul class="findings">{items}</ul>')
    for table in block.tables:
        if table.rows:
            parts.append('<div class="scroll">'
                         + render_table(table, f"{section.slug}-{table.name}") + "</div>")
    return "\n".join(parts)


def _section(section: SectionReport) -> str:
    parts = [f'<section id="{section.slug}" data-section="{escape(section.title)}">',
             f"<h2>{escape(section.title)}</h2>",
             render_environment(section.environment, f"{section.slug}-environment")]
    if section.noise:
        parts.append(f'<p class="noise" id="{section.slug}-noise">'
                     + " ".join(escape(s) for s in section.noise) + "</p>")
    parts += [_block(section, block) for block in section.blocks]
    if section.failures.rows:
        parts.append(f'<h3 id="{section.slug}-failures">Failed cases</h3>')
        parts.append('<div class="scroll">'
                     + render_table(section.failures, f"{section.slug}-failures-table")
                     + "</div>")
    if section.absent:
        items = "".join(f"<li>{prose(a)}</li>" for a in section.absent)
        parts.append(f'<div class="absent">Not shown for this section:<ul>{items}</ul></div>')
    parts.append("</section>")
    return "\n".join(parts)


def _nav(sections: Sequence[SectionReport]) -> str:
    items = []
    for s in sections:
        inner = "".join(f'<li><a href="#{s.slug}-{b.kind.name}">{escape(b.kind.title)}</a></li>'
                        for b in s.blocks)
        items.append(f'<li><a href="#{s.slug}">{escape(s.title)}</a><ul>{inner}</ul></li>')
    return f"<nav><strong>Contents</strong><ul>{''.join(items)}</ul></nav>"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render_page(title: str, sections: Sequence[SectionReport], notes: Sequence[str],
                records: int, files: int) -> str:
    """The whole page as a string: heading, contents, notes, one `<section>` per section.

    `records` and `files` are counted in the subtitle.
    """
    own = sum(not s.across for s in sections)
    subtitle = (f"{_plural(records, 'case')} from {_plural(files, 'results file')}, in "
                f"{_plural(own, 'section')}: one per results file and device, never merged"
                + ("; then the figures that set them side by side." if own < len(sections) else "."))
    notes_html = ""
    if notes:
        items = "".join(f"<li>{escape(n)}</li>" for n in notes)
        notes_html = f'<div class="notes"><strong>Notes</strong><ul>{items}</ul></div>'
    body = "\n".join(_section(s) for s in sections)
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{escape(title)}</h1>\n<p class=\"sub\">{escape(subtitle)}</p>\n"
        f"{_nav(sections)}\n{notes_html}\n{body}\n</main>\n<script>{SCRIPT}</script>\n"
        "</body>\n</html>\n"
    )

"""`accumbench report`: results files in, figures + HTML page + Markdown summary out."""

from __future__ import annotations

from pathlib import Path

import click

from accumbench.cli.common import OutPath, fail_input


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", default="report", show_default=True,
              type=OutPath(file_okay=False, path_type=Path),
              help="Folder to write index.html, summary.md and the figures into.")
@click.option("--title", default="accumbench report", show_default=True,
              help="Heading of the page and the summary.")
def report(results: tuple[Path, ...], out_dir: Path, title: str) -> None:
    """Turn results files into figures, one HTML page and a Markdown summary.

    Writes DIR/index.html (self-contained: open it offline), DIR/summary.md (for a pull-request
    comment) and each figure as PNG and SVG, among them memory_vs_effective_batch.png. Each
    results file and device gets its own section; nothing is merged across them.

    \b
    Example:
      accumbench run --suite smoke --device cpu --out results/cpu.jsonl
      accumbench report results/cpu.jsonl --out report/
      accumbench report results/h100.jsonl results/cpu.jsonl --out report/   # two sections
    """
    # Heavy imports here, not at module level: `accumbench --help` imports every command.
    from accumbench.records import RecordError
    from accumbench.report import ReportInputError, build_report

    try:
        result = build_report(list(results), out_dir, title=title)
    except (RecordError, ReportInputError) as exc:
        fail_input(str(exc))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    figures = sum(1 for f in result.files if f.suffix == ".png")
    click.echo(f"wrote {out_dir / 'index.html'}, {out_dir / 'summary.md'} and {figures} "
               f"figure(s) (PNG + SVG): {result.records} case(s) in "
               f"{sum(not s.across for s in result.sections)} section(s)")

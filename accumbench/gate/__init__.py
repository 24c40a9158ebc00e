"""The regression gate, in small flat modules (as pytest-benchmark does it).

- `stats`: pure statistics on step-time samples (medians, Mann-Whitney U, attainable p-values).
- `checks`: the tolerance strategies, parsed from strings like "0.5%", "1MiB", "median:10%".
- `compare`: matches baseline and current records by case and decides each case's verdict.
- `table`: renders a comparison as a terminal table, Markdown (PR comments) or JSON.
- `baseline`: accepting a new baseline without ever overwriting one silently.

`accumbench.compare` re-exports the entry points. Nothing here knows about click.
"""

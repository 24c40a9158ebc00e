"""Predicted against measured throughput: the estimate meter's samples/s beside the measured.

Drawn when the report's files hold both estimate records (meter "estimate", samples/s from the
step-time model of `accumbench.steptime`) and measured records of the same case ids. The
measured throughput figures never show predicted samples/s (`report.data` leaves them out), so
this is the one place a prediction is drawn, labelled as one.
"""

from __future__ import annotations

import statistics

import pandas as pd
from matplotlib.figure import Figure

from accumbench.report.layout import PALETTE, SCENARIO_MARKERS
from accumbench.report.tables import Cell, Table, number, text


def predicted_vs_measured_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per case with both a measured and a predicted samples/s: columns `case_id`,
    `workload`, `scenario`, `measured`, `predicted`, `error` (predicted / measured - 1)."""
    ok = frame[frame["status"] == "ok"]
    predicted = ok[ok["meter"] == "estimate"]
    predicted = predicted[pd.to_numeric(predicted["samples_per_s"], errors="coerce") > 0]
    measured = ok[(ok["meter"] != "estimate") & (pd.to_numeric(ok["samples_per_s_"], errors="coerce") > 0)]
    if predicted.empty or measured.empty:
        return pd.DataFrame(columns=["case_id", "workload", "scenario", "measured", "predicted", "error"])
    joined = measured[["case_id", "workload", "scenario", "samples_per_s_"]].merge(
        predicted[["case_id", "samples_per_s"]].drop_duplicates("case_id", keep="last"), on="case_id")
    joined = joined.rename(columns={"samples_per_s_": "measured", "samples_per_s": "predicted"})
    joined["measured"] = joined["measured"].astype(float)
    joined["predicted"] = joined["predicted"].astype(float)
    joined["error"] = joined["predicted"] / joined["measured"] - 1.0
    return joined


def predicted_vs_measured(frame: pd.DataFrame) -> Figure | None:
    """Predicted against measured samples/s on log axes, one colour per workload, one marker per
    scenario, with the diagonal and a +-25% band; None without cases that have both."""
    rows = predicted_vs_measured_rows(frame)
    if rows.empty:
        return None
    fig = Figure(figsize=(7.0, 6.0))
    ax = fig.add_subplot()
    for i, (workload, mine) in enumerate(rows.groupby("workload", sort=True)):
        color = PALETTE[i % len(PALETTE)]
        for scenario, part in mine.groupby("scenario"):
            ax.scatter(part["measured"], part["predicted"], color=color, marker=SCENARIO_MARKERS.get(scenario, "o"),
                       label=f"{workload} {scenario}", s=28)
    low = min(rows["measured"].min(), rows["predicted"].min()) * 0.8
    high = max(rows["measured"].max(), rows["predicted"].max()) * 1.25
    ax.plot([low, high], [low, high], color="#1b1b1b", linewidth=1, label="predicted = measured")
    ax.fill_between([low, high], [low * 0.75, high * 0.75], [low * 1.25, high * 1.25], color="#7f7f7f",
                    alpha=0.15, label="within 25%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("measured samples/s")
    ax.set_ylabel("predicted samples/s (estimate meter, not measured)")
    median = statistics.median(rows["error"].abs())
    ax.set_title(f"Predicted vs measured throughput: {len(rows)} cases, median |error| {median:.0%}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def predicted_table(frame: pd.DataFrame) -> Table:
    """Every case with both speeds: measured and predicted samples/s and the prediction's error,
    worst first (no rows without such cases)."""
    rows = predicted_vs_measured_rows(frame)
    rows = rows.reindex(rows["error"].abs().sort_values(ascending=False).index)
    return Table("predicted", ("workload", "case", "measured samples/s", "predicted samples/s", "error"), tuple(
        (text(r.workload), text(r.case_id), number(r.measured, lambda v: f"{v:,.1f}"),
         number(r.predicted, lambda v: f"{v:,.1f}"), Cell(f"{r.error:+.1%}", r.error))
        for r in rows.itertuples()))


def predicted_findings(frame: pd.DataFrame) -> list[str]:
    """One line: how far the predictions are from the measurements."""
    rows = predicted_vs_measured_rows(frame)
    if rows.empty:
        return []
    errors = rows["error"].abs()
    worst = rows.loc[errors.idxmax()]
    return [f"Predicted samples/s are within {statistics.median(errors):.0%} of the measured (median over "
            f"{len(rows)} cases); the worst is {worst['error']:+.0%} ({worst['case_id']})."]


__all__ = ["predicted_findings", "predicted_table", "predicted_vs_measured", "predicted_vs_measured_rows"]

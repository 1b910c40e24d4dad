"""A report table and its four writers: Markdown, LaTeX (booktabs), CSV and one HTML page.

A table is built once (`Table` of `Cell`s: the shown text, and for a statistic the plain
numbers behind it plus its emphasis) and written in every format from that one model, so
the formats cannot disagree. Markdown and LaTeX show the text with the paper's emphasis
(bold best, underlined second; a mark such as † for a significant win). CSV holds only plain
numbers, one line per statistic cell (mean, std, n, ci_low, ci_high, p_value), for a reader
that computes with them. The HTML page is self-contained: tables and every figure (PNG,
base64-embedded) in one file a person opens in a browser, with nothing to fetch.
"""
from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tabulate import tabulate

from bbench.report.stats import Summary

FORMATS = ("md", "latex", "csv", "html")
EXTENSIONS = {"md": "md", "latex": "tex", "csv": "csv"}


@dataclass
class Cell:
    """One table cell: its text, and for a statistic the numbers and emphasis behind it."""

    text: str
    stats: Summary | None = None
    p_value: float | None = None
    bold: bool = False
    underline: bool = False
    mark: str = ""  # appended after the text, e.g. "†"


@dataclass
class Table:
    """A titled table; `label_columns` leading columns name the row (method, family, ...)."""

    name: str  # file stem
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    label_columns: int = 1
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Figure:
    """A written figure: its PNG (embedded in the HTML page) and its caption."""

    title: str
    png: Path
    caption: str = ""


def parse_formats(text: str) -> list[str]:
    """`md,latex` -> ["md", "latex"], refusing an unknown format by name."""
    chosen = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise ValueError(f"unknown report format {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(FORMATS)} (comma-separated)")
    return list(dict.fromkeys(chosen))


def markdown(table: Table) -> str:
    def show(c: Cell) -> str:
        text = c.text + c.mark
        if c.bold:
            text = f"**{text}**"
        if c.underline:
            text = f"<u>{text}</u>"
        return text.replace("|", "\\|")

    body = tabulate([[show(c) for c in row] for row in table.rows], headers=table.headers,
                    tablefmt="github", disable_numparse=True)
    notes = "".join(f"\n\n{n}" for n in table.notes)
    return f"### {table.title}\n\n{body}{notes}\n"


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}", "±": r"$\pm$", "†": r"$^\dagger$", "∅": r"$\emptyset$",
                 "φ": r"$\varphi$", "Δ": r"$\Delta$", "≥": r"$\geq$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)


def latex(table: Table) -> str:
    """A booktabs table (\\toprule/\\midrule/\\bottomrule), emphasis as \\textbf / \\underline."""
    def show(c: Cell) -> str:
        text = latex_escape(c.text + c.mark)
        if c.bold:
            text = rf"\textbf{{{text}}}"
        if c.underline:
            text = rf"\underline{{{text}}}"
        return text

    spec = "l" * table.label_columns + "r" * (len(table.headers) - table.label_columns)
    lines = [f"% {latex_escape(table.title)}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.headers) + r" \\", r"\midrule"]
    lines += [" & ".join(show(c) for c in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {latex_escape(n)}" for n in table.notes]
    return "\n".join(lines) + "\n"


CSV_NUMBERS = ("mean", "std", "n", "ci_low", "ci_high", "p_value")


def csv_text(table: Table) -> str:
    """One line per statistic cell: the row's labels, the column, then plain numbers only.

    A table without statistics (the selected hyper-parameters) is written as it is shown.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if not any(c.stats for row in table.rows for c in row):
        writer.writerow(table.headers)
        writer.writerows([c.text for c in row] for row in table.rows)
        return buf.getvalue()
    labels = table.headers[:table.label_columns]
    writer.writerow([*labels, "column", *CSV_NUMBERS])
    for row in table.rows:
        names = [c.text for c in row[:table.label_columns]]
        for header, cell in zip(table.headers[table.label_columns:], row[table.label_columns:]):
            s = cell.stats
            if s is None:
                continue
            writer.writerow([*names, header, *(_number(v) for v in
                                               (s.mean, s.std, s.n, s.ci_low, s.ci_high, cell.p_value))])
    return buf.getvalue()


def _number(value: float | int | None) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def write_table(table: Table, out_dir: Path, formats: Sequence[str]) -> list[Path]:
    """The table's file in each of `formats` except html (the page holds every table)."""
    writers = {"md": markdown, "latex": latex, "csv": csv_text}
    written = []
    for fmt in formats:
        if fmt in writers:
            path = out_dir / f"{table.name}.{EXTENSIONS[fmt]}"
            path.write_text(writers[fmt](table))
            written.append(path)
    return written


def html_table(table: Table) -> str:
    def show(c: Cell, tag: str) -> str:
        text = html.escape(c.text + c.mark)
        if c.bold:
            text = f"<b>{text}</b>"
        if c.underline:
            text = f"<u>{text}</u>"
        title = ""
        if c.stats is not None and c.stats.ci_low is not None:
            title = f' title="95% CI [{c.stats.ci_low:.4g}, {c.stats.ci_high:.4g}], n={c.stats.n}"'
        return f"<{tag}{title}>{text}</{tag}>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "\n".join("<tr>" + "".join(show(c, "th" if i < table.label_columns else "td")
                                      for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in table.notes)
    return (f"<h2>{html.escape(table.title)}</h2>\n<table>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>\n{notes}")


PAGE_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:110em}"
              "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
              "th,td{border-bottom:1px solid #ccc;padding:0.25em 0.6em;text-align:right}"
              "tbody th{text-align:left;font-weight:normal}thead th{border-bottom:2px solid #333}"
              "p.note{color:#444;font-size:0.85em}figure{margin:1em 0}img{max-width:100%}")


def html_page(title: str, intro: Sequence[str], tables: Sequence[Table], figures: Sequence[Figure],
              skipped: Sequence[str]) -> str:
    """One self-contained page: every table, every figure as an embedded PNG, the skipped records."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{PAGE_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in intro]
    parts += [html_table(t) for t in tables]
    for fig in figures:
        data = base64.b64encode(fig.png.read_bytes()).decode("ascii")
        parts.append(f"<figure><h2>{html.escape(fig.title)}</h2><img alt=\"{html.escape(fig.title)}\" "
                     f"src=\"data:image/png;base64,{data}\"><figcaption>{html.escape(fig.caption)}"
                     f"</figcaption></figure>")
    if skipped:
        items = "".join(f"<li>{html.escape(s)}</li>" for s in skipped)
        parts.append(f"<h2>Skipped records</h2><ul>{items}</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

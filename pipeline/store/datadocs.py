"""Data Docs: the validation suites and results as a static site that reads offline.

Great Expectations' own site renderer loads Bootstrap, jQuery, Font Awesome and vega from CDNs;
its index table is even built by JavaScript from a CDN, so offline (the normal case for a node
machine) it lists nothing. This renders the same material (the declared suites, and each batch's
GX validation result as saved by ``pipeline.store.validation.save_report`` / ``quarantine``) as plain HTML
with inline CSS: no script, no external URL, readable from ``file://`` anywhere.

Layout of ``<warehouse>/data_docs/``: ``index.html`` (every suite, every kept result, newest first),
``suites/<table>.html`` (each expectation with the rule it protects), ``results/<batch id>.html``
(each expectation's outcome, and for a failed one the rows and values). The site is built in a
temporary folder and swapped in whole, under the warehouse's writer lock.
"""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.store.validation import SuiteDecl, ValidationReport

SITE_DIR = "data_docs"
# Results rendered (newest first); the saved reports themselves are bounded in pipeline.store.validation.
DEFAULT_RESULTS = 500

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:72em;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top;font-size:.92em}
th{background:#f3f3f3}tr.failed td{background:#fdecea}tr.passed td.verdict{color:#1b5e20}
td.verdict{font-weight:600}.failed td.verdict{color:#b71c1c}code{font-size:.9em;word-break:break-all}
.muted{color:#777}.nav a{margin-right:1em}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, depth: int = 0) -> str:
    up = "../" * depth
    nav = (f'<p class="nav"><a href="{up}index.html">Data Docs index</a></p>' if depth else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{nav}"
            f"<h1>{_e(title)}</h1>{body}</body></html>\n")


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _suite_page(decl: SuiteDecl, rows: Sequence[Any], invariants: Mapping[str, str]) -> str:
    from pipeline.store.checks import INVARIANTS

    def definition(name: str) -> str:
        fn = INVARIANTS.get(name)
        return " ".join((fn.__doc__ or "").split()) if fn else "no null in a column declared non-nullable"

    expectations = "".join(
        f"<tr><td>{i}</td><td><code>{_e(e.describe())}</code></td><td>{_e(e.why)}</td></tr>"
        for i, e in enumerate(rows, 1))
    checks = "".join(f"<tr><td><code>{_e(name)}</code></td><td>{_e(definition(name))}</td><td>{_e(why)}</td></tr>"
                     for name, why in invariants.items())
    body = (f"<p>{_e(decl.description)}</p>"
            f"<h2>Expectations ({len(rows)})</h2><p>Run by Great Expectations on the table's columns.</p>"
            f"<table><tr><th>#</th><th>expectation</th><th>rule it protects</th></tr>{expectations}</table>")
    if checks:
        body += (f"<h2>Invariants ({len(invariants)})</h2><p>Rules across rows, tables or the stored chain, run "
                 f"beside the suite by <code>pipeline/store/checks.py</code>; a row that cannot be decided from "
                 f"the batch and its context is not a failure.</p><table><tr><th>invariant</th><th>definition</th>"
                 f"<th>rule it protects</th></tr>{checks}</table>")
    return _page(f"Suite: {decl.table}", body, depth=1)


def _outcomes(result: dict) -> list[tuple[str, bool, str]]:
    """(expectation, success, detail) per expectation of one table's GX result."""
    from pipeline.store.validation import ExpectationDecl, _short

    out = []
    for r in result.get("results", []):
        cfg = r.get("expectation_config") or {}
        kwargs = {k: v for k, v in (cfg.get("kwargs") or {}).items() if k != "batch_id"}
        name = ExpectationDecl(cfg.get("type", "?"), kwargs, "").describe()
        res = r.get("result") or {}
        detail = []
        if res.get("element_count") is not None:
            detail.append(f"{res.get('unexpected_count', 0)} of {res['element_count']} rows unexpected")
        if "observed_value" in res:
            detail.append(f"observed {_short(res['observed_value'], 120)}")
        exc = r.get("exception_info") or {}
        if exc.get("raised_exception"):
            detail.append(f"error: {exc.get('exception_message')}")
        out.append((name, bool(r.get("success")), "; ".join(detail)))
    return out


def _result_page(report: ValidationReport, quarantined: bool, where: str) -> str:
    verdict = "passed" if report.ok else ("rejected, quarantined" if quarantined else "failed")
    span = f"{report.heights[0]}..{report.heights[1]}" if report.heights else "-"
    counts = ", ".join(f"{t}: {n:,} rows" for t, n in report.row_counts.items())
    body = (f"<table><tr><th>batch</th><td><code>{_e(report.batch_id)}</code></td></tr>"
            f"<tr><th>validated</th><td>{_e(report.created)}</td></tr><tr><th>heights</th><td>{_e(span)}</td></tr>"
            f"<tr><th>rows</th><td>{_e(counts)}</td></tr><tr><th>verdict</th><td>{_e(verdict)}: "
            f"{report.evaluated - len(report.failures)} of {report.evaluated} checks passed</td></tr>"
            f"<tr><th>stored in</th><td><code>{_e(where)}</code></td></tr></table>")
    if report.failures:
        rows = "".join(f"<tr class=\"failed\"><td>{_e(f.table)}</td><td>{_e(f.line())}</td></tr>"
                       for f in report.failures)
        body += f"<h2>Failures</h2><table><tr><th>table</th><th>what failed</th></tr>{rows}</table>"
    for table, result in report.gx_results.items():
        rows = "".join(
            f"<tr class=\"{'passed' if ok else 'failed'}\"><td><code>{_e(name)}</code></td>"
            f"<td class=\"verdict\">{'passed' if ok else 'FAILED'}</td><td>{_e(detail)}</td></tr>"
            for name, ok, detail in _outcomes(result))
        rows += "".join(
            f"<tr class=\"{'passed' if o.get('success') else 'failed'}\"><td><code>invariant({_e(name)})</code></td>"
            f"<td class=\"verdict\">{'passed' if o.get('success') else 'FAILED'}</td>"
            f"<td>{_e(str(o.get('unexpected_count', 0)) + ' rows unexpected')}</td></tr>"
            for name, o in report.invariant_results.get(table, {}).items())
        body += (f"<h2>{_e(table)}</h2><table><tr><th>check</th><th>outcome</th><th>detail</th></tr>"
                 f"{rows}</table>")
    context = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in report.context.items())
    if context:
        body += f"<h2>Validation context</h2><table>{context}</table>"
    return _page(f"Batch {report.batch_id}", body, depth=1)


def _index(suites: Sequence[tuple[SuiteDecl, int]], results: Sequence[tuple[ValidationReport, bool, str]],
           title: str, total_kept: int) -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    suite_rows = "".join(
        f"<tr><td><a href=\"suites/{_safe_name(d.table)}.html\">{_e(d.table)}</a></td><td>{n}</td>"
        f"<td>{_e(d.description)}</td></tr>" for d, n in suites)
    result_rows = []
    for report, quarantined, page in results:
        verdict = "passed" if report.ok else ("QUARANTINED" if quarantined else "failed")
        span = f"{report.heights[0]}..{report.heights[1]}" if report.heights else "-"
        rows = ", ".join(f"{t} {n:,}" for t, n in report.row_counts.items())
        result_rows.append(
            f"<tr class=\"{'passed' if report.ok else 'failed'}\"><td><a href=\"{_e(page)}\">"
            f"<code>{_e(report.batch_id)}</code></a></td><td>{_e(report.created)}</td><td>{_e(span)}</td>"
            f"<td>{_e(rows)}</td><td class=\"verdict\">{verdict}</td>"
            f"<td>{report.evaluated - len(report.failures)} / {report.evaluated}</td></tr>")
    shown = (f"the newest {len(results)} of {total_kept} kept" if total_kept > len(results)
             else f"{len(results)}")
    body = (f"<p class=\"muted\">Generated {now}. Plain HTML: no script, no network access needed.</p>"
            f"<h2>Expectation suites ({len(suites)})</h2><table><tr><th>table</th><th>checks</th>"
            f"<th>description</th></tr>{suite_rows}</table>"
            f"<h2>Validation results ({shown})</h2>"
            "<p>Every committed batch is listed (passing ones with the outcome of each expectation), and every "
            "rejected batch, which is kept under <code>quarantine/</code> and was not loaded.</p>"
            "<table><tr><th>batch</th><th>validated (UTC)</th><th>heights</th><th>rows</th><th>verdict</th>"
            f"<th>checks passed</th></tr>{''.join(result_rows) or '<tr><td colspan=6>none yet</td></tr>'}"
            "</table>")
    return _page(title, body)


def saved_results(warehouse_root: Path) -> list[tuple[str, Path, bool]]:
    """(batch id, path of its saved report, quarantined?) of every kept result, newest first."""
    found: list[tuple[str, Path, bool]] = []
    for p in (warehouse_root / "validations").glob("*.json"):
        found.append((p.stem, p, False))
    for p in (warehouse_root / "quarantine").glob("*/validation.json"):
        if not p.parent.name.startswith(".tmp-"):
            found.append((p.parent.name, p, True))
    found.sort(key=lambda x: x[0], reverse=True)
    return found


def build_data_docs(warehouse_root: Path | str, limit: int = DEFAULT_RESULTS,
               suites: Iterable[SuiteDecl] | None = None) -> Path:
    """Render the site into ``<warehouse>/data_docs`` (built aside, swapped in whole); returns index.html.
    The caller holds the warehouse's writer lock (the temp folders are cleaned by the next writer)."""
    from pipeline.store.schemas import table_spec
    from pipeline.store.validation import ValidationReport, all_suite_decls

    root = Path(warehouse_root)
    site = root / SITE_DIR
    tmp = root / f".{SITE_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "suites").mkdir(parents=True)
    (tmp / "results").mkdir()
    listed: list[tuple[SuiteDecl, int]] = []
    for decl in suites if suites is not None else all_suite_decls():
        spec = table_spec(decl.table)
        rows, invariants = decl.all_expectations(spec), decl.all_invariants(spec)
        (tmp / "suites" / f"{_safe_name(decl.table)}.html").write_text(_suite_page(decl, rows, invariants),
                                                                      encoding="utf-8")
        listed.append((decl, len(rows) + len(invariants)))
    kept = saved_results(root)
    results: list[tuple[ValidationReport, bool, str]] = []
    for batch_id, path, quarantined in kept[:limit]:
        try:
            report = ValidationReport.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a hand-edited or foreign file must not stop the docs build
        page = f"results/{_safe_name(batch_id)}.html"
        where = str(path.parent if quarantined else path)
        (tmp / page).write_text(_result_page(report, quarantined, where), encoding="utf-8")
        results.append((report, quarantined, page))
    (tmp / "index.html").write_text(_index(listed, results, f"poolwatch Data Docs: {root}", len(kept)),
                                    encoding="utf-8")
    old = root / f".{SITE_DIR}.old"
    if old.exists():
        shutil.rmtree(old)
    if site.exists():
        os.replace(site, old)
    os.replace(tmp, site)
    if old.exists():
        shutil.rmtree(old)
    return site / "index.html"

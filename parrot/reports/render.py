"""Report renderers: Markdown (image by relative file name) and self-contained HTML (image inline)."""

from __future__ import annotations

import base64
import html
import re
import time

from parrot.reports.build import Report, Table


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_NUMBER = re.compile(r"^[-+–0-9.,%\[\] ]+$")


def _numeric(table: Table, col: int) -> bool:
    """Right-align a column when every cell is a number, an interval or a dash."""
    return col > 0 and all(_NUMBER.match(row[col]) for row in table.rows if col < len(row))


def to_markdown(report: Report) -> str:
    out = [f"# {report.title}", "", f"_Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `parrot report`._", ""]
    for s in report.sections:
        out += [f"## {s.title}", ""]
        if s.image:
            out += [f"![per-turn scores]({s.image})", ""]
        if s.text:
            out += [s.text, ""]
        for t in s.tables:
            out.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
            out.append("|" + "|".join("---:" if _numeric(t, i) else "---" for i in range(len(t.headers))) + "|")
            for row in t.rows:
                out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
            out.append("")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}th{background:#f5f5f5}
td:first-child,th:first-child,td.t{text-align:left}
img{max-width:100%;border:1px solid #eee}.meta{color:#777;font-size:.85em}
""".strip()


def to_html(report: Report, images: dict[str, bytes]) -> str:
    """One HTML file with CSS and images inline (data: URIs): it opens anywhere, offline."""
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">", f"<title>{e(report.title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(report.title)}</h1>",
           f"<p class=\"meta\">Generated {e(time.strftime('%Y-%m-%d %H:%M:%S %Z'))} by parrot report.</p>"]
    for s in report.sections:
        out.append(f"<h2>{e(s.title)}</h2>")
        if s.image and s.image in images:
            data = base64.b64encode(images[s.image]).decode()
            out.append(f"<p><img alt=\"per-turn scores\" src=\"data:image/png;base64,{data}\"></p>")
        if s.text:
            out.append(f"<p>{e(s.text)}</p>")
        for t in s.tables:
            out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in t.headers) + "</tr></thead><tbody>")
            left = [not _numeric(t, i) for i in range(len(t.headers))]
            for row in t.rows:
                out.append("<tr>" + "".join(f"<td class=\"t\">{e(c)}</td>" if i < len(left) and left[i] else f"<td>{e(c)}</td>"
                                            for i, c in enumerate(row)) + "</tr>")
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out)

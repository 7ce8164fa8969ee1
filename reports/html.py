"""The report as one self-contained HTML page, rendered from ``report.md`` so both show the same numbers.

Figures are embedded as ``data:`` URIs and the page carries its own CSS and sorting script, so the file
can be mailed, archived or opened offline without the ``figures/`` folder next to it.

The page must never run anything but its own script, whatever names the study, its files or its errors
carry: report.md escapes them (``ferbench.reports.escaping``), and as a second line of defence the rendering
passes no raw HTML through and keeps only links that cannot run script (``_SafeLinks``).
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
import xml.etree.ElementTree as etree
from pathlib import Path

import markdown
from markdown.treeprocessors import Treeprocessor
from markdown.util import AMP_SUBSTITUTE

from ferbench.harness.study.atomic import atomic_write_text

HEADER_FACTS = ("Dataset", "Split", "Hardware", "Versions")  # bullet labels of report.md lifted into the header

CSS = """
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --band: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5; font-size: 15px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Liberation Sans", "DejaVu Sans", sans-serif; }
main, header.report, nav.toc { max-width: 1100px; margin: 0 auto; padding: 0 24px; }
header.report { padding-top: 24px; padding-bottom: 8px; border-bottom: 1px solid var(--line); }
header.report h1 { font-size: 1.7em; margin: 0 0 12px; }
header.report dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0 0 12px; }
header.report dt { font-weight: 600; color: var(--muted); }
header.report dd { margin: 0; overflow-wrap: anywhere; }
nav.toc { padding-top: 12px; padding-bottom: 12px; }
nav.toc ol { margin: 4px 0 0; padding-left: 1.4em; columns: 2 320px; column-gap: 32px; }
nav.toc a, main a { color: var(--accent); text-decoration: none; }
nav.toc a:hover, main a:hover { text-decoration: underline; }
h2 { font-size: 1.35em; margin: 36px 0 12px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.1em; margin: 24px 0 8px; }
p, ul, ol { margin: 0 0 12px; }
li { margin: 2px 0; }
blockquote { margin: 0 0 16px; padding: 8px 14px; border-left: 4px solid #bf8700; background: #fff8c5; border-radius: 4px; }
blockquote p:last-child { margin-bottom: 0; }
code { font-family: ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 0.88em;
  background: var(--band); padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
.table-wrap { display: inline-block; max-width: 100%; overflow-x: auto; vertical-align: top; margin: 0 0 16px;
  border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; font-size: 0.9em; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--band); }
tbody tr:hover { background: #eaeef2; }
th { background: #eef1f4; position: sticky; top: 0; cursor: pointer; user-select: none; }
th::after { content: "\\2195"; color: #aab2bb; padding-left: 6px; font-size: 0.85em; }
th[aria-sort="ascending"]::after { content: "\\25B2"; color: var(--accent); }
th[aria-sort="descending"]::after { content: "\\25BC"; color: var(--accent); }
th.num, td.num { text-align: right; }
figure { margin: 16px 0 24px; text-align: center; }
figure img { max-width: 100%; max-height: 760px; width: auto; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 4px; }
.missing-figure { display: inline-block; padding: 10px 14px; border: 2px dashed #cf222e; border-radius: 6px;
  color: #cf222e; background: #fff5f5; font-weight: 600; }
footer { max-width: 1100px; margin: 32px auto; padding: 0 24px; color: var(--muted); font-size: 0.85em; }
"""

# Sort key: missing cells ("", "–", "– (…)") last in either direction, then numbers (leading number of
# "0.42 ± 0.01 [..]", "1,234", "34 (14.2%)", "−0.07"), then text; ties keep the original row order.
SCRIPT = """
(function () {
  function key(cell) {
    var t = cell.textContent.trim().replace(/\\u2212/g, "-");
    if (t === "" || t === "-" || /^[\\u2013\\u2014]/.test(t) || /^nan$/i.test(t)) return null;
    var m = t.replace(/(\\d),(?=\\d{3}(?!\\d))/g, "$1").match(/^[-+]?(\\d+\\.?\\d*|\\.\\d+)(e[-+]?\\d+)?/i);
    return m ? {n: parseFloat(m[0])} : {s: t};
  }
  function compare(a, b) {
    if ("n" in a && "n" in b) return a.n - b.n;
    if ("n" in a) return -1;
    if ("n" in b) return 1;
    return a.s.localeCompare(b.s, undefined, {numeric: true, sensitivity: "base"});
  }
  function sortBy(table, th, col) {
    var body = table.tBodies[0];
    if (!body) return;
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    var rows = Array.prototype.map.call(body.rows, function (row, i) {
      return {row: row, i: i, k: row.cells[col] ? key(row.cells[col]) : null};
    });
    rows.sort(function (a, b) {
      if (a.k === null || b.k === null) return (a.k === null) - (b.k === null) || a.i - b.i;
      return dir * compare(a.k, b.k) || a.i - b.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "Sort by this column";
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, th, col); }
      });
    });
    var rows = table.tBodies[0] ? table.tBodies[0].rows : [];
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {  // right-align numeric columns
      var keys = Array.prototype.map.call(rows, function (r) { return r.cells[col] ? key(r.cells[col]) : null; });
      var present = keys.filter(function (k) { return k !== null; });
      if (!present.length || !present.every(function (k) { return "n" in k; })) return;
      th.classList.add("num");
      Array.prototype.forEach.call(rows, function (r) { if (r.cells[col]) r.cells[col].classList.add("num"); });
    });
  });
})();
"""


# Python-Markdown's placeholder for a backslash-escaped character until its "unescape" step.
_ESCAPED = re.compile("\x02(\\d+)\x03")
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):", re.I)
_URL_IGNORED = re.compile(r"[\x00-\x20\x7f-\x9f\s]+")  # what a browser drops from a URL before reading its scheme
SAFE_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp)[;,]", re.I)
URL_ATTRIBUTES = {"href", "src", "srcset", "action", "formaction", "xlink:href", "background", "poster", "data", "ping"}
CHECKED_URLS = {("a", "href"), ("img", "src")}  # the only URL attributes kept, each when its check passes
ALLOWED_TAGS = {"div", "p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "a", "img", "code", "pre", "em",
                "strong", "blockquote", "hr", "br", "table", "thead", "tbody", "tr", "th", "td", "span", "figure",
                "figcaption", "header", "nav", "main", "dl", "dt", "dd"}


def _text(element: etree.Element) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m.group(1))), "".join(element.itertext())).strip()


def _url(value: str) -> str:
    """The URL a browser would follow: entities decoded (also nested ones), blanks and controls dropped."""
    value, previous = value.replace(AMP_SUBSTITUTE, "&"), None
    while value != previous:
        previous, value = value, html.unescape(value)
    return _URL_IGNORED.sub("", _ESCAPED.sub(lambda m: chr(int(m.group(1))), value))


def safe_href(value: str) -> bool:
    """http(s), a relative link or an in-page ``#anchor``: nothing that runs script (``javascript:``,
    ``vbscript:``, ``data:text/html``, ``file:``, …)."""
    scheme = _SCHEME.match(_url(value))
    return scheme is None or scheme.group(1).lower() in ("http", "https")


def safe_src(value: str) -> bool:
    """A relative file (embedded later) or an embedded raster image; no remote or scripted source."""
    url = _url(value)
    return bool(SAFE_IMAGE.match(url)) or (_SCHEME.match(url) is None and not url.startswith(("//", "\\")))


class _SafeLinks(Treeprocessor):
    """The last step: a link that could run script becomes its text, such an image its alt text, and no
    element keeps an event handler or a tag Markdown does not write (raw HTML is off, so none should)."""

    def run(self, root: etree.Element) -> None:
        for element in root.iter():
            if element.tag not in ALLOWED_TAGS:
                element.tag = "span"
            for name in list(element.attrib):
                lowered = name.lower()
                if lowered.startswith("on") or (lowered in URL_ATTRIBUTES and (element.tag, lowered) not in CHECKED_URLS):
                    del element.attrib[name]
            if element.tag == "a" and not safe_href(element.get("href", "")):
                element.tag = "span"
                element.attrib.clear()
            elif element.tag == "img" and not safe_src(element.get("src", "")):
                alt = element.get("alt", "")
                element.tag = "span"
                element.attrib.clear()
                element.text = alt


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


class _ReportTree(Treeprocessor):
    """Embeds figures, wraps tables for scrolling and sorting, and builds the header and contents."""

    def __init__(self, md: markdown.Markdown, report_dir: Path) -> None:
        super().__init__(md)
        self.report_dir = report_dir.resolve()
        self.title = "FERBench report"

    def _image(self, img: etree.Element) -> etree.Element | None:
        """Returns a replacement for an image that cannot be embedded (a visible note), else None."""
        src = img.get("src", "")
        path = (self.report_dir / src).resolve()
        ok = not re.match(r"^[a-z][a-z0-9+.-]*:", src, re.I) and path.is_relative_to(self.report_dir) and path.is_file()
        if ok:
            img.set("src", _data_uri(path))
            return None
        note = etree.Element("span", {"class": "missing-figure", "role": "img"})
        note.text = f"Figure missing: {src}" + (f" ({img.get('alt')})" if img.get("alt") else "")
        return note

    def run(self, root: etree.Element) -> None:
        for paragraph in list(root.iter("p")):  # a paragraph holding one image alone becomes a captioned figure
            if len(paragraph) == 1 and paragraph[0].tag == "img" and not (paragraph.text or "").strip() \
                    and not (paragraph[0].tail or "").strip():
                paragraph.tag = "figure"
                if paragraph[0].get("alt"):
                    etree.SubElement(paragraph, "figcaption").text = paragraph[0].get("alt")
        for parent in list(root.iter()):
            for index, child in enumerate(list(parent)):
                if child.tag == "img" and (note := self._image(child)) is not None:
                    note.tail = child.tail
                    parent[index] = note
                elif child.tag == "table":
                    child.set("class", "sortable")
                    wrap = etree.Element("div", {"class": "table-wrap"})
                    wrap.tail, child.tail = child.tail, None
                    wrap.append(child)
                    parent[index] = wrap
        header = etree.Element("header", {"class": "report"})
        facts = etree.Element("dl")
        h1 = next(iter(root.iter("h1")), None)
        if h1 is not None:
            self.title = _text(h1)
            if h1 in list(root):
                root.remove(h1)
            header.append(h1)
            if " — " in self.title:
                etree.SubElement(facts, "dt").text = "Study"
                etree.SubElement(facts, "dd").text = self.title.split(" — ", 1)[1]
        for label in HEADER_FACTS:
            item = next((li for li in root.iter("li") if (li.text or "").startswith(f"{label}:")), None)
            if item is not None:
                etree.SubElement(facts, "dt").text = label
                dd = etree.SubElement(facts, "dd")
                dd.text = (item.text or "")[len(label) + 1:].lstrip()
                for child in item:
                    dd.append(_copy(child))
        if len(facts):
            header.append(facts)
        nav = etree.Element("nav", {"class": "toc", "aria-label": "Contents"})
        etree.SubElement(nav, "strong").text = "Contents"
        entries = etree.SubElement(nav, "ol")
        used: set[str] = set()
        for h2 in root.iter("h2"):
            slug = re.sub(r"[^a-z0-9]+", "-", _text(h2).lower()).strip("-") or "section"
            base, n = slug, 2
            while slug in used:
                slug, n = f"{base}-{n}", n + 1
            used.add(slug)
            h2.set("id", slug)
            link = etree.SubElement(etree.SubElement(entries, "li"), "a", {"href": f"#{slug}"})
            link.text = _text(h2)
        main = etree.Element("main")
        main.extend(list(root))
        for child in list(root):
            root.remove(child)
        root.extend([header, *([nav] if len(entries) else []), main])


def _copy(element: etree.Element) -> etree.Element:
    clone = etree.Element(element.tag, dict(element.attrib))
    clone.text, clone.tail = element.text, element.tail
    clone.extend(_copy(child) for child in element)
    return clone


def render_html(markdown_text: str, report_dir: Path) -> str:
    """The page for ``markdown_text``, images resolved relative to ``report_dir`` and embedded.

    Raw HTML in the Markdown is shown as text, never interpreted: trial errors may contain ``<…>``;
    links and images that could run script are dropped (``_SafeLinks``).
    """
    md = markdown.Markdown(extensions=["tables"], output_format="html")
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    md.inlinePatterns.deregister("entity")
    tree = _ReportTree(md, Path(report_dir))
    md.treeprocessors.register(tree, "ferbench_report", 15)  # after inline markup, before prettify
    md.treeprocessors.register(_SafeLinks(md), "ferbench_safe_links", -10)  # last: sees the final attributes
    body = md.convert(markdown_text)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(tree.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n"
        "<footer>Rendered from report.md; tables also in tables/*.csv. Click a column header to sort.</footer>\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def write_html_report(report_dir: Path) -> Path:
    """Renders ``report_dir/report.md`` to ``report_dir/report.html`` (atomically); returns its path."""
    report_dir = Path(report_dir)
    target = report_dir / "report.html"
    atomic_write_text(target, render_html((report_dir / "report.md").read_text(encoding="utf-8"), report_dir))
    return target

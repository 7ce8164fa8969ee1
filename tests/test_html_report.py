"""The self-contained HTML report: embedded figures, escaping and the missing-figure note checked on the
rendered text, then the page opened in headless Chromium to check that its images decode, its layout
fits the window and its sorting script orders rows as intended."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from helpers import REFERENCE_ARMS, Page  # noqa: E402
from ferbench.reports.html import render_html, write_html_report  # noqa: E402



def decode_data_uri(uri: str) -> bytes:
    assert uri.startswith("data:image/png;base64,"), uri[:60]
    return base64.b64decode(uri.split(",", 1)[1], validate=True)


def assert_no_external_references(text: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"<link\b|@import|url\(", text, re.I)


def write_png(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0.1, 0.4, 0.3])
    figure.savefig(path)
    plt.close(figure)
    return path.read_bytes()


SAMPLE = """# FERBench report — demo (tiny-1)

Created today.

## Study

- Dataset: **synthfer**, 240 images 24×24
- Split: stratified train/val/test [0.7, 0.1, 0.2] (seed 42)
- Hardware: x86_64, 2 CPUs
- Versions: torch 2.14.1, ray 2.60.0

## Arms

| arm | test acc | note |
|---|---|---|
| a<b> & "c" | 0.423 | `x<y>` |
| plain | – | two \\| parts |

- `small_cnn_s0` — **failed**: <script>alert(1)</script> & expected <class 'int'>

## Figures

![Curves over epochs](figures/curves.png)

![Gone for good](figures/missing.png)
"""


def test_render_html_embeds_figures_escapes_text_and_notes_missing_figures(tmp_path):
    png = write_png(tmp_path / "figures" / "curves.png")
    text = render_html(SAMPLE, tmp_path)
    page = Page(text)

    assert len(page.images) == 1 and page.images[0]["alt"] == "Curves over epochs"
    assert decode_data_uri(page.images[0]["src"]) == png
    assert "Figure missing: figures/missing.png (Gone for good)" in text
    assert 'src="figures/missing.png"' not in text

    assert page.tables == [[["arm", "test acc", "note"], ['a<b> & "c"', "0.423", "x<y>"], ["plain", "–", "two | parts"]]]
    assert "<td>a&lt;b&gt; &amp; &quot;c&quot;</td>" in text or "<td>a&lt;b&gt; &amp; \"c\"</td>" in text
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;class 'int'&gt;" in text
    assert text.count("<script>") == 1  # the page's own sorting script only

    assert page.dts == ["Study", "Dataset", "Split", "Hardware", "Versions"]
    assert "<dd>demo (tiny-1)</dd>" in text and "<dd><strong>synthfer</strong>, 240 images 24×24</dd>" in text
    assert "<title>FERBench report — demo (tiny-1)</title>" in text
    assert [link for link in page.links if link.startswith("#")] == ["#study", "#arms", "#figures"]
    assert {"study", "arms", "figures"} <= set(page.ids)
    assert_no_external_references(text)


def test_images_outside_the_report_folder_or_remote_are_not_embedded(tmp_path):
    report_dir = tmp_path / "report"
    write_png(tmp_path / "secret.png")
    text = render_html("![a](../secret.png)\n\n![b](https://example.org/x.png)\n", report_dir)
    assert "data:" not in text and "Figure missing: ../secret.png" in text and "Figure missing: https://example.org/x.png" in text
    assert_no_external_references(text)


def test_write_html_report_writes_the_rendering_of_report_md(tmp_path):
    write_png(tmp_path / "figures" / "curves.png")
    (tmp_path / "report.md").write_text(SAMPLE, encoding="utf-8")
    target = write_html_report(tmp_path)
    assert target == tmp_path / "report.html"
    assert target.read_text(encoding="utf-8") == render_html(SAMPLE, tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.html")]  # no temporary left


# --------------------------------------------------------------------------- in Chromium


SORT_TABLE = """## Sorting

| arm | value |
|---|---|
| beta | 12 |
| Alpha | – |
| gamma | 1,234 |
| delta | 0.42 ± 0.01 [0.40, 0.44] |
| epsilon | −0.5 |
| zeta | 0.423 |
| eta | – (fewer than 2 seed pairs) |
"""

CLICKS = """<script>
function order(col) { return Array.prototype.map.call(document.querySelectorAll("tbody tr"),
  function (r) { return r.cells[col].textContent; }).join("|"); }
function click(col) { document.querySelectorAll("th")[col].dispatchEvent(new MouseEvent("click", {bubbles: true})); }
var seen = {};
click(1); seen.asc = order(0); seen.ascIndicator = document.querySelectorAll("th")[1].getAttribute("aria-sort");
click(1); seen.desc = order(0);
click(0); seen.byName = order(0); seen.otherHeader = document.querySelectorAll("th")[1].getAttribute("aria-sort");
document.body.setAttribute("data-seen", JSON.stringify(seen));
</script></body>"""


def test_clicking_a_header_sorts_numerically_in_chromium(chromium, tmp_path):
    page = tmp_path / "sort.html"
    page.write_text(render_html(SORT_TABLE, tmp_path).replace("</body>", CLICKS), encoding="utf-8")
    dom = Page(chromium(page, tmp_path / "profile", "--dump-dom"))
    assert "data-seen" in dom.body, "the test's click script did not run"
    seen = json.loads(dom.body["data-seen"])
    missing_last = ["Alpha", "eta"]  # blank and "–" cells stay last, in their original order, both ways
    assert seen["asc"].split("|") == ["epsilon", "delta", "zeta", "beta", "gamma", *missing_last]
    assert seen["ascIndicator"] == "ascending"
    assert seen["desc"].split("|") == ["gamma", "beta", "zeta", "delta", "epsilon", *missing_last]
    assert seen["byName"].split("|") == ["Alpha", "beta", "delta", "epsilon", "eta", "gamma", "zeta"]
    assert seen["otherHeader"] is None  # only the sorted column shows a direction
    assert [h.get("aria-sort") for h in dom.headers] == ["ascending", None]
    assert dom.tables[0][1:] == [[name, value] for name, value in (row.split(" | ") for row in [
        "Alpha | –", "beta | 12", "delta | 0.42 ± 0.01 [0.40, 0.44]", "epsilon | −0.5", "eta | – (fewer than 2 seed pairs)",
        "gamma | 1,234", "zeta | 0.423"])]


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The pipe tables of report.md as cell texts (inline code and bold marks dropped, escapes read)."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|(-+\|)+", line):
                cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
                rows.append([html.unescape(re.sub(r"\\(.)", r"\1", re.sub(r"(?<!\\)`|\*\*", "", c))).strip() for c in cells])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


LAYOUT = """<script>
var main = document.querySelector("main"), images = Array.prototype.slice.call(document.images);
document.body.setAttribute("data-layout", JSON.stringify({
  pageWidth: document.documentElement.scrollWidth, viewport: window.innerWidth, mainWidth: main.clientWidth,
  decoded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length, images: images.length,
  widestImage: Math.max.apply(null, images.map(function (i) { return i.getBoundingClientRect().width; })),
  wrappedTables: document.querySelectorAll(".table-wrap > table.sortable").length}));
</script></body>"""


@pytest.fixture
def tiny_report(reference_study) -> Path:
    """The session's reference experiment's report folder (read only)."""
    return reference_study.report_dir


def test_report_html_of_a_real_experiment_in_chromium(chromium, tiny_report, tmp_path):
    markdown_text = (tiny_report / "report.md").read_text(encoding="utf-8")
    text = (tiny_report / "report.html").read_text(encoding="utf-8")
    assert text == render_html(markdown_text, tiny_report)  # build_report wrote it from the same Markdown
    assert_no_external_references(text)

    alone = tmp_path / "alone" / "report.html"  # without figures/ beside it: everything must be inside
    alone.parent.mkdir()
    alone.write_text(text.replace("</body>", LAYOUT), encoding="utf-8")
    dom = Page(chromium(alone, tmp_path / "profile", "--dump-dom"))

    linked = re.findall(r"!\[([^\]]*)\]\((figures/[^)]+\.png)\)", markdown_text)
    assert len(linked) >= 7 and len(dom.images) == len(linked)
    for image, (alt, link) in zip(dom.images, linked):
        assert image["alt"] == alt and decode_data_uri(image["src"]) == (tiny_report / link).read_bytes()
    md_tables = markdown_tables(markdown_text)
    assert len(md_tables) >= 5 and dom.tables == md_tables  # every cell, as report.md has it
    arms = next(t for t in dom.tables if t[0][:2] == ["arm", "status"])
    assert sorted(row[0] for row in arms[1:]) == sorted(REFERENCE_ARMS)
    assert all(h.get("title") == "Sort by this column" and h.get("tabindex") == "0" for h in dom.headers)  # script ran

    layout = json.loads(dom.body["data-layout"])
    assert layout["decoded"] == layout["images"] == len(linked)
    assert layout["pageWidth"] <= layout["viewport"], layout  # wide tables scroll inside their box, not the page
    assert 0 < layout["widestImage"] <= layout["mainWidth"], layout
    assert layout["wrappedTables"] == len(md_tables)

    shot = tmp_path / "report.png"
    chromium(tiny_report / "report.html", tmp_path / "profile", f"--screenshot={shot}")
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # figures and text drawn

"""The report as blocks (headings, text, tables, figures, collapsed JSON) rendered twice: a
self-contained ``index.html`` (images embedded as base64 PNG) and ``report.md`` beside the PNG
files it links."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
from pathlib import Path

from matplotlib.figure import Figure

DPI = 110
STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
.note { background: #fff4d6; border-left: 4px solid #e0a800; padding: .6em 1em; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: .85em; }
figcaption { color: #555; font-size: .9em; }
"""


@dataclasses.dataclass
class Picture:
    name: str           # file name stem
    png: bytes
    caption: str


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


class Page:
    """Blocks in order; ``write`` renders them into a directory."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple[str, object]] = []

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def markdown_tables(self, text: str) -> None:
        """Text with ``### `` headings and pipe tables (the evaluation stages' ``render``)."""
        self.blocks.append(("markdown", text))

    def figure(self, name: str, fig: Figure | None, caption: str = "") -> None:
        if fig is not None:
            self.blocks.append(("figure", Picture(name, png_bytes(fig), caption)))

    def json(self, summary: str, value: object) -> None:
        self.blocks.append(("json", (summary, json.dumps(value, indent=2, sort_keys=True))))

    @property
    def pictures(self) -> list[Picture]:
        return [b for kind, b in self.blocks if kind == "figure"]

    def write(self, directory: Path) -> Path:
        """Write ``index.html``, ``report.md`` and one PNG per figure; returns ``index.html``."""
        directory.mkdir(parents=True, exist_ok=True)
        names = [p.name for p in self.pictures]
        if len(set(names)) != len(names):
            raise ValueError(f"figure names repeat: {names}")
        for picture in self.pictures:
            (directory / f"{picture.name}.png").write_bytes(picture.png)
        (directory / "report.md").write_text(self.markdown())
        index = directory / "index.html"
        index.write_text(self.html())
        return index

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, block in self.blocks:
            if kind == "heading":
                out += [f"## {block}", ""]
            elif kind == "text":
                out += [str(block), ""]
            elif kind == "note":
                out += [f"> **Note.** {block}", ""]
            elif kind == "table":
                header, rows = block
                out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                        for row in rows]
                out += [""]
            elif kind == "markdown":
                out += [block.replace("### ", "#### "), ""]
            elif kind == "figure":
                out += [f"![{block.name}]({block.name}.png)", ""]
                if block.caption:
                    out += [f"*{block.caption}*", ""]
            elif kind == "json":
                summary, text = block
                out += [f"<details><summary>{summary}</summary>", "", "```json", text, "```", "",
                        "</details>", ""]
        return "\n".join(out)

    def html(self) -> str:
        out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
               f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>",
               f"<h1>{html.escape(self.title)}</h1>"]
        for kind, block in self.blocks:
            if kind == "heading":
                out.append(f"<h2>{html.escape(block)}</h2>")
            elif kind == "text":
                out.append(f"<p>{html.escape(str(block))}</p>")
            elif kind == "note":
                out.append(f"<p class='note'>{html.escape(str(block))}</p>")
            elif kind == "table":
                out.append(_html_table(*block))
            elif kind == "markdown":
                out.append(_markdown_tables_to_html(block))
            elif kind == "figure":
                data = base64.b64encode(block.png).decode("ascii")
                out.append(f"<figure><img alt='{html.escape(block.name)}' "
                           f"src='data:image/png;base64,{data}'>"
                           f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
            elif kind == "json":
                summary, text = block
                out.append(f"<details><summary>{html.escape(summary)}</summary>"
                           f"<pre>{html.escape(text)}</pre></details>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown_tables_to_html(text: str) -> str:
    """``### `` headings, pipe tables and plain lines, as the evaluation tables are written."""
    out, table = [], []

    def flush():
        if table:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            rows = [r for r in cells[1:] if not all(set(c) <= set("-:") for c in r)]
            out.append(_html_table(cells[0], rows))
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            out.append(f"<h3>{html.escape(line.lstrip('#').strip())}</h3>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)

"""Build docs/ into a static site: `python docs/build_site.py [--out site]` (what `tox -e docs` runs).

The generator is MkDocs with the Material theme (chosen: Markdown stays the source, readable on
GitHub and in an editor as before; one small YAML-free configuration below; mkdocstrings renders
the API page from the docstrings). Everything works offline:

- math: `$$ ... $$` blocks and `\\( ... \\)` inline are turned into MathML at build time
  (latex2mathml), which browsers render natively: no MathJax or KaTeX from a CDN;
- fonts: the theme's Google Fonts are switched off (the system's fonts are used);
- code references such as `mindref/routing.py: route` become links to a generated page of that
  file's source, anchored at the definition (by name, so a link cannot drift with line numbers;
  tests/test_docs.py checks every cited name exists, tests/test_site.py that every link resolves).

This file is both the build script and the MkDocs hooks module (on_files, on_page_markdown).
"""
from __future__ import annotations

import argparse
import html
import re
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
PAGES = [("Home", "index.md"), ("The specification", "spec.md"), ("Decisions", "decisions.md"),
         ("Serving", "serving.md"), ("Gradients", "gradients.md"),
         ("Conformance kit", "conformance.md"), ("Reliability", "reliability.md"),
         ("Results", "results.md"), ("Scaling", "scaling.md"), ("Glossary", "glossary.md"), ("API", "api.md")]
CITED = re.compile(r"`((?:mindref|export|tests|bench)/[\w/]+\.py)(?:: ?(\w+))?`")
DISPLAY = re.compile(r"^\$\$(.+?)\$\$[ \t]*$", re.S | re.M)  # $$ ... $$, on one line or several
INLINE = re.compile(r"\\\((.+?)\\\)")
FENCE = re.compile(r"^```.*?^```[^\n]*$|(?:^    [^\n]*\n)+", re.S | re.M)  # fenced and indented code


def config(out: Path, src: Path) -> dict:
    return {
        "site_name": "mindref: MIND, annotated",
        "docs_dir": str(DOCS), "site_dir": str(out), "use_directory_urls": False,
        "exclude_docs": "build_site.py\n__pycache__/\n",
        "nav": [{title: page} for title, page in PAGES],
        "theme": {"name": "material", "font": False, "features": ["navigation.sections", "toc.follow"]},
        "markdown_extensions": ["tables", "admonition", "attr_list", {"toc": {"permalink": True}},
                                "pymdownx.superfences"],
        "plugins": ["search", {"mkdocstrings": {"handlers": {"python": {
            "paths": [str(src)], "options": {"show_source": False, "heading_level": 2,
                                              "members_order": "source", "show_root_heading": True}}}}}],
        "hooks": [str(Path(__file__).resolve())],
        "strict": False,
    }


# ---- hooks ------------------------------------------------------------------------------------

def on_files(files, config):
    """A page of source for every file the docs cite, so that code references have a target."""
    from mkdocs.structure.files import File
    cited = sorted({f for page in DOCS.glob("*.md") for f, _ in CITED.findall(page.read_text())})
    for path in cited:
        if (ROOT / path).is_file():
            files.append(File.generated(config, f"source/{path}.md", content=_source_page(path)))
    return files


def _source_page(path: str) -> str:
    """The file's source with an anchor at each top-level or method definition."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    out = [f"# {path}", "", '<pre class="mindref-source"><code>']
    for number, line in enumerate(lines, 1):
        defined = re.match(r"\s*(?:def|class) (\w+)|^(\w+)\s*[:=]", line)
        name = defined and (defined.group(1) or defined.group(2))
        anchor = f'<span id="{name}"></span>' if name else ""
        out.append(f'{anchor}<span id="L{number}"></span>{html.escape(line)}')
    out.append("</code></pre>")
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Math to MathML and code references to links, outside code blocks."""
    depth = page.file.src_uri.count("/")
    parts, last = [], 0
    for block in FENCE.finditer(markdown):
        parts.append(_prose(markdown[last:block.start()], depth))
        parts.append(block.group(0))
        last = block.end()
    parts.append(_prose(markdown[last:], depth))
    return "".join(parts)


def _prose(text: str, depth: int) -> str:
    from latex2mathml.converter import convert
    text = DISPLAY.sub(lambda m: convert(m.group(1).strip(), display="block") + "\n", text)
    text = INLINE.sub(lambda m: convert(m.group(1)), text)
    up = "../" * depth

    def link(m: re.Match) -> str:
        path, name = m.group(1), m.group(2)
        if not (ROOT / path).is_file():
            return m.group(0)
        target = f"{up}source/{path}.md" + (f"#{name}" if name else "")
        return f"[{m.group(0)}]({target})"
    return CITED.sub(link, text)


# ---- the build --------------------------------------------------------------------------------

def build(out: Path) -> Path:
    """The site in `out` (an absolute path); returns it."""
    import yaml
    from mkdocs.commands.build import build as mkdocs_build
    from mkdocs.config import load_config
    with tempfile.TemporaryDirectory() as tmp:  # the config lives outside docs/, which is its docs_dir
        path = Path(tmp) / "mkdocs.yml"
        path.write_text(yaml.safe_dump(config(out.resolve(), _package_tree(Path(tmp)))))
        mkdocs_build(load_config(str(path)))
    return out


def _package_tree(tmp: Path) -> Path:
    """mindref as installed (export/ is the subpackage mindref.export), as links, for the API
    page's static reading of the source."""
    package = tmp / "src" / "mindref"
    package.mkdir(parents=True)
    for entry in (ROOT / "mindref").iterdir():
        (package / entry.name).symlink_to(entry)
    (package / "export").symlink_to(ROOT / "export")
    return package.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "site")
    print(build(ap.parse_args().out.resolve()))


if __name__ == "__main__":
    main()

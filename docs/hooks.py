"""mkdocs hooks: the README is the site's front page (``index.md``), so it is written once, for GitHub and the site.

Its links into ``docs/`` become the site's page links, and the pages' links to ``../README.md`` the front page's.
"""
import re
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

README = Path(__file__).resolve().parents[1] / 'README.md'


def on_files(files, config):
    files.append(File.generated(config, 'index.md', content=README.read_text(encoding='utf-8'),
                                inclusion=InclusionLevel.INCLUDED))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == 'index.md':
        return re.sub(r'\]\(docs/', '](', markdown)
    return markdown.replace('](../README.md', '](index.md')

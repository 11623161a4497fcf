#!/usr/bin/env python3
"""Regenerate the typed-parameter table of docs/compatibility.md from
libmail/src/config/params.tsv (the section between the BEGIN/END markers).
Run it after changing the registry; the test registry_is_documented fails
until the table lists every typed parameter."""
import os, re
top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
rows = []
for line in open(os.path.join(top, "libmail/src/config/params.tsv")):
    if line.startswith("#"):
        continue
    name, typ, _default, meaning = line.rstrip("\n").split("\t", 3)
    if typ in ("-", "-raw"):
        continue
    meaning = meaning.replace("|", "\\|")
    rows.append(f"| `{name}` | {typ} | {meaning} |")
doc_path = os.path.join(top, "docs/compatibility.md")
doc = open(doc_path).read()
begin = doc.index("<!-- BEGIN typed parameters")
begin = doc.index("-->", begin) + 3
end = doc.index("<!-- END typed parameters -->")
table = "\n| parameter | type | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"
open(doc_path, "w").write(doc[:begin] + table + doc[end:])
print(f"{len(rows)} typed parameters listed")

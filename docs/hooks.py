"""What the documentation build adds to plain MkDocs (mkdocs.yml: hooks,
and the API reference's griffe extension).

* The benchmark plots in benchmarks/results/ become files of the site, at
  benchmarks/results/NAME.png, so pages show the committed run's plots
  without copies of them under docs/.
* ``<!-- cli-help: COMMAND -->`` in a page becomes the ``--help`` text of
  ``fastshm COMMAND`` (``<!-- cli-help: -->``: of ``fastshm`` itself), as
  the source tree's parser prints it at 80 columns.
* Sphinx roles in docstrings (``:class:`Segment```) lose the role in the
  API reference and keep the code.
* ``NewAsInit``: Segment, Queue, Publisher and Subscriber are made by
  ``__new__``; the API reference shows its parameters as the class's (and
  ``mode=0o600`` in octal, as the source writes it).  Publisher's and
  Subscriber's attributes, declared bare, get the docs of the properties
  that define them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# ---- MkDocs hooks ----


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"benchmarks/results/{png.name}",
                                    abs_src_path=str(png)))
    return files


_HELP_MARK = re.compile(r"<!-- cli-help: ?([a-z-]*) ?-->")
_help: Optional[Dict[str, str]] = None

# Prints {"": fastshm --help, COMMAND: fastshm COMMAND --help, ...} as JSON.
_HELP_SCRIPT = """
import argparse, json
from fastshm.cli import build_parser
p = build_parser()
out = {"": p.format_help()}
for a in p._actions:
    if isinstance(a, argparse._SubParsersAction):
        for name, sub in a.choices.items():
            out[name] = sub.format_help()
print(json.dumps(out))
"""


def _cli_help() -> Dict[str, str]:
    global _help
    if _help is None:
        env = dict(os.environ, COLUMNS="80", PYTHONPATH=str(ROOT / "src"))
        proc = subprocess.run([sys.executable, "-c", _HELP_SCRIPT], capture_output=True,
                              text=True, env=env, timeout=120, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"fastshm's --help texts could not be made:\n{proc.stderr}")
        _help = json.loads(proc.stdout)
    return _help


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def expand(m: "re.Match[str]") -> str:
        helps = _cli_help()
        command = m.group(1)
        if command not in helps:
            raise RuntimeError(f"{page.file.src_uri}: fastshm has no command {command!r}")
        return "```text\n" + helps[command].rstrip() + "\n```"

    return _HELP_MARK.sub(expand, markdown)


_ROLE = re.compile(r":(?:class|meth|attr|func|exc|mod|data|obj):(?=<code>)")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return _ROLE.sub("", html)


# ---- the griffe extension of the API reference ----

try:
    import griffe
except ImportError:  # only the API reference needs it
    pass
else:

    def _octal_mode(func: "griffe.Function") -> None:
        """``mode=0o600`` as written, not as the number the parser made of it."""
        for param in func.parameters:
            if param.name == "mode" and str(param.default) == "384":
                param.default = "0o600"

    def _property_doc(attr: Any) -> Optional[str]:
        """``doc=`` of ``name = property(getter, doc="...")``, or the docstring."""
        if attr.docstring:
            return str(attr.docstring.value)
        value = getattr(attr, "value", None)
        if value is None:
            return None
        try:
            call = ast.parse(str(value), mode="eval").body
        except SyntaxError:
            return None
        if isinstance(call, ast.Call):
            for kw in call.keywords:
                if kw.arg == "doc":
                    doc = ast.literal_eval(kw.value)
                    return doc if isinstance(doc, str) else None
        return None

    # Publisher's and Subscriber's attributes are declared bare in their base
    # and documented where each binding defines them.
    _DOCUMENTED_IN = {
        "Publisher": ("_HandlePublisher", "_HandleChannel"),
        "Subscriber": ("_HandleSubscriber", "_HandleChannel"),
    }

    class NewAsInit(griffe.Extension):
        """A class with ``__new__`` and no ``__init__`` of its own gets an
        ``__init__`` with ``__new__``'s parameters, which mkdocstrings shows
        as the class's signature (merge_init_into_class).  And the
        channel's bare attributes get the docs their properties carry."""

        def on_package(self, *, pkg: "griffe.Module", **kwargs: Any) -> None:
            if pkg.name != "fastshm" or "channel" not in pkg.members:
                return
            channel = pkg["channel"]
            for public, sources in _DOCUMENTED_IN.items():
                cls = channel[public]
                for name, member in list(cls.all_members.items()):
                    if name.startswith("_") or not member.is_attribute or member.docstring:
                        continue
                    doc = None
                    for source in sources:
                        defined = channel[source].members.get(name)
                        doc = _property_doc(defined) if defined is not None else None
                        if doc:
                            break
                    # Made the class's own, documented or not, so that they
                    # stay in the order of the source.
                    attr = griffe.Attribute(name, lineno=member.lineno,
                                            endlineno=member.endlineno,
                                            docstring=griffe.Docstring(doc) if doc else None)
                    attr.labels.add("property")
                    cls.set_member(name, attr)

        def on_class_members(self, *, cls: "griffe.Class", **kwargs: Any) -> None:
            for member in cls.members.values():
                if isinstance(member, griffe.Function):
                    _octal_mode(member)
            new = cls.members.get("__new__")
            if new is None or "__init__" in cls.members or not isinstance(new, griffe.Function):
                return
            params = list(new.parameters)
            if params and params[0].name == "cls":
                params = params[1:]
            init = griffe.Function(
                "__init__",
                lineno=new.lineno,
                endlineno=new.endlineno,
                parameters=griffe.Parameters(griffe.Parameter("self"), *params),
                returns=None,
            )
            cls.set_member("__init__", init)

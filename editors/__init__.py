"""Knowledge editors behind one interface (:class:`bench.core.editor.Editor`).

Importing this package registers every editor: each module of this package (except ``registry``
and names starting with ``_``) is imported, and so is every entry point of the group
``bench.editors`` of other installed packages. A new editor is therefore one module here (a class
decorated with ``@register("<name>")``) plus one YAML in ``conf/editor/`` (``name: <name>``);
nothing else to edit (README, "Extending").
"""

import importlib
import pkgutil
from importlib.metadata import entry_points

from bench.core.editor import Editor

from .registry import build, get, names

__all__ = ["Editor", "build", "get", "names"]

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_") and _m.name != "registry":
        importlib.import_module(f"{__name__}.{_m.name}")  # registration side effects
for _ep in entry_points(group="bench.editors"):
    _ep.load()  # e.g. [project.entry-points."bench.editors"] my_editor = "my_pkg.my_editor"

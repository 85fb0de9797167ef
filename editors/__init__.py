"""Knowledge editors behind one interface (:class:`editors.base.Editor`).

Importing this package registers every editor; a new editor is one module here
plus one YAML in ``conf/editor/``.
"""

from . import elder, ft_l, grace, liveedit, melo, none, ultraedit, wise  # noqa: F401  (registration side effects)
from .base import Editor
from .registry import build, get, names

__all__ = ["Editor", "build", "get", "names"]

"""Remote code: which source files a saved folder carries, and copying them there.

``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` imports the file named in
``model_index.json`` and copies into its module cache only the siblings that file itself names in
``from .x import`` lines (diffusers' ``dynamic_modules_utils.get_relative_imports``, without recursion).
So a saved folder carries the defining module's whole relative-import closure, and the module must name
each member of that closure itself.

Copied into every saved folder (``saving`` imports it), so it imports only the standard library.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shutil
from pathlib import Path

# The textual forms diffusers follows to copy a remote module's relative imports (dynamic_modules_utils).
_DIFFUSERS_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\S+)\s+import", flags=re.MULTILINE)


def relative_import_closure(source_file: str | os.PathLike) -> list[Path]:
    """``source_file`` and every sibling module it imports relatively, directly or not, found with ``ast``.

    Raises:
        ValueError: for imports diffusers cannot follow into a flat remote-code folder: ``from .. import``
            (parent packages), ``from .a.b import`` (subpackages) and ``from . import name``.
        FileNotFoundError: when a relatively imported module has no file beside ``source_file``.
    """
    source_file = Path(source_file).resolve()
    folder = source_file.parent
    found: list[Path] = []
    pending = [source_file]
    while pending:
        path = pending.pop()
        if path in found:
            continue
        found.append(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            where = f"{path.name}, line {node.lineno}"
            if node.level > 1 or node.module is None or "." in node.module:
                raise ValueError(
                    f"{where}: remote code must import siblings as `from .module import name`; diffusers "
                    "cannot copy parent packages, subpackages or `from . import module` into a saved folder."
                )
            target = folder / f"{node.module}.py"
            if not target.is_file():
                raise FileNotFoundError(
                    f"{where} imports .{node.module}, but {target} does not exist."
                )
            pending.append(target)
    return found


def _check_diffusers_can_follow(source_file: Path, closure: list[Path]) -> None:
    # For a local folder, diffusers copies only the relative imports written in the module file itself
    # into its module cache, not theirs; a module reached only indirectly would be missing at import.
    direct = set(_DIFFUSERS_RELATIVE_IMPORT.findall(source_file.read_text(encoding="utf-8")))
    indirect = sorted(path.stem for path in closure[1:] if path.stem not in direct)
    if indirect:
        raise ValueError(
            f"{source_file.name} reaches {indirect} only through other modules. diffusers copies just the "
            f"relative imports written in {source_file.name} itself when it loads remote code from a "
            f"folder, so add `from .<module> import ...` lines for {indirect} to {source_file.name}."
        )


def copy_source_closure(cls: type, destination: Path) -> str:
    """Copy the module defining ``cls`` and its relative imports into ``destination``; return its stem."""
    source = inspect.getsourcefile(cls)
    if source is None or cls.__module__ == "__main__":
        raise ValueError(
            f"{cls.__name__} is defined in {cls.__module__!r}, which has no importable source file; "
            "define it in a module so it can be saved as remote code."
        )
    source_path = Path(source).resolve()
    closure = relative_import_closure(source_path)
    _check_diffusers_can_follow(source_path, closure)
    destination.mkdir(parents=True, exist_ok=True)
    for path in closure:
        shutil.copyfile(path, destination / path.name)
    return source_path.stem

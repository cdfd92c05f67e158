"""The small pretrained model shipped inside the package, so that sampling and the Space work offline.

Its folder carries copies of ``hf_ddpm/core`` (the remote code that lets diffusers load it without
hf_ddpm). After a change to core, refresh those copies without retraining::

    python -m hf_ddpm.hub.bundled --refresh-code

``tests/architecture/test_layout.py`` fails, naming this command, while any copy differs from its source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "mnist-5k"
REFRESH_COMMAND = "python -m hf_ddpm.hub.bundled --refresh-code"


def bundled_model_path() -> Path | None:
    """The bundled pipeline folder, or None when this checkout does not ship one yet."""
    return BUNDLED_MODEL_DIR if (BUNDLED_MODEL_DIR / "model_index.json").is_file() else None


def remote_code_sources(folder: Path) -> dict[Path, Path]:
    """Each remote-code file a saved hf_ddpm folder should hold -> the core module it is a copy of.

    The pipeline's file and its relative imports go to the folder's root, each custom component's to
    its subfolder, exactly as ``HFDDPMPipeline.save_pretrained`` lays them out.
    """
    from hf_ddpm.core.remote_code import relative_import_closure
    from hf_ddpm.core.saving import MODEL_INDEX

    core = Path(__file__).resolve().parents[1] / "core"
    index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
    entries = {"": index["_class_name"][0]}
    entries.update(
        (name, entry[0])
        for name, entry in index.items()
        if not name.startswith("_")
        and isinstance(entry, list)
        and entry[0] not in (None, "diffusers")
    )
    wanted: dict[Path, Path] = {}
    for subfolder, module in entries.items():
        for source in relative_import_closure(core / f"{module}.py"):
            wanted[folder / subfolder / source.name] = source
    return wanted


def refresh_code(folder: Path = BUNDLED_MODEL_DIR) -> list[Path]:
    """Rewrite the remote-code copies in ``folder`` from ``hf_ddpm/core``; weights, configs and the card
    are left alone. Stale ``.py`` files that core no longer has are removed. Returns the files written."""
    wanted = remote_code_sources(folder)
    for stale in set(folder.rglob("*.py")) - set(wanted):
        stale.unlink()
    for copy, source in wanted.items():
        tmp = copy.with_name(f".{copy.name}.tmp")
        tmp.write_bytes(source.read_bytes())
        tmp.replace(copy)
    return sorted(wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Maintain the bundled model's folder.")
    parser.add_argument(
        "--refresh-code",
        action="store_true",
        help="copy hf_ddpm/core's current remote code into the bundled folder (no retraining)",
    )
    args = parser.parse_args(argv)
    if not args.refresh_code:
        parser.print_help()
        return 2
    for path in refresh_code():
        print(f"refreshed {path.relative_to(BUNDLED_MODEL_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How ``vit-explore lab`` (and ``bash .ci/env lab``) starts JupyterLab on the tour.

Three things a first-time user expects from the main command:

* the URL the server prints opens the tour (``LabApp.default_url`` is the notebook, so the
  printed ``…/lab/tree/01_tour.ipynb?token=…`` lands on it, not on the Launcher);
* running the notebooks leaves the checkout clean: on save, :func:`strip_outputs` (the
  contents manager's ``pre_save_hook``) drops outputs and execution counts and keeps the
  notebook metadata that is on disk, so a saved tracked notebook is byte-identical to the
  committed one unless its cells were edited (edits are kept: they are the user's);
* a quiet Lab: no "get Jupyter news?" toast over the widget and no update check, through a
  settings override in the launched environment (``<app settings>/overrides.d/vit-explore.json``),
  never the user's own settings.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

QUIET_SETTINGS: dict[str, Any] = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
    # comm messages over kernel subshells (JupyterLab >= 4.4 with ipykernel 7) lose widget updates
    # now and then ("Unknown subshell_id" in the kernel log): the Explorer's comms use the main shell
    "@jupyterlab/apputils-extension:kernels-settings": {"commsOverSubshells": "disabled"},
}
OVERRIDES_NAME = "vit-explore.json"


def strip_outputs(model: dict[str, Any], path: str, contents_manager: Any, **kwargs: Any) -> None:
    """``ContentsManager.pre_save_hook``: save notebooks without outputs, counts or new metadata.

    ``model["content"]`` is the notebook about to be written (an ``nbformat.NotebookNode``).
    """
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    nb = model["content"]
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    try:  # the kernel's language_info (Python version), widget state: keep what is on disk
        on_disk = Path(contents_manager._get_os_path(path))
        if on_disk.is_file():
            nb["metadata"] = json.loads(on_disk.read_text(encoding="utf-8")).get("metadata", nb.get("metadata", {}))
    except (OSError, ValueError, AttributeError):
        pass


def settings_dir() -> Path:
    """JupyterLab's application settings folder of this environment (``<app_dir>/settings``)."""
    from jupyterlab.commands import get_app_dir

    return Path(get_app_dir()) / "settings"


def write_quiet_settings() -> Path | None:
    """Write the override that silences the news toast and update check; None if not writable."""
    target = settings_dir() / "overrides.d" / OVERRIDES_NAME
    text = json.dumps(QUIET_SETTINGS, indent=2) + "\n"
    try:
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError:
        return None
    return target


def lab_command(notebook: Path, extra: list[str]) -> list[str]:
    """The ``jupyter lab`` command line that serves ``notebook``'s folder and opens it."""
    nb = notebook.resolve()
    cmd = [
        sys.executable, "-m", "jupyter", "lab",
        f"--ServerApp.root_dir={nb.parent}",
        f"--LabApp.default_url=/lab/tree/{nb.name}",
        "--ContentsManager.pre_save_hook=vit_explore._lab.strip_outputs",
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        *extra,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in cmd:
        cmd.append("--allow-root")  # Jupyter refuses to run as root without it
    return cmd

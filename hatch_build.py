"""Build hook: compile pipeline/native/txscan.c, the decoder's C transaction walk, at install time.

A plain shared library (no Python headers, loaded with ctypes), built with the interpreter's own C
compiler settings. Without a compiler the install still succeeds and the decoder uses its Python
walk (same results, slower); the warning says so. Editable installs (`make install`) build the
library next to its source; wheels carry it as pipeline/native/_txscan.so and get a platform tag.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = "pipeline/native/txscan.c"
TARGET = "pipeline/native/_txscan.so"


def compile_library(source: Path, output: Path) -> str | None:
    """Compile ``source`` into the shared library ``output``; None on success, else the reason."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    tmp = output.with_name(output.name + ".tmp")
    cmd = [*cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(source)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        return f"no C compiler ({cc[0]} not found)"
    except subprocess.CalledProcessError as exc:
        return f"{' '.join(cmd)} failed: {exc.stderr.strip()[-400:]}"
    os.replace(tmp, output)  # never leave a half-written library where the loader looks
    return None


class CustomBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        if version == "editable":
            output = root / TARGET
        else:
            output = Path(tempfile.mkdtemp(prefix="poolwatch-native-")) / "_txscan.so"
        problem = compile_library(root / SOURCE, output)
        if problem is not None:
            self.app.display_warning(f"poolwatch: the decoder's C walk was not built ({problem}); "
                                     "the Python walk will be used (identical results, ~50x slower decoding)")
            return
        if version != "editable":
            build_data["force_include"][str(output)] = TARGET
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

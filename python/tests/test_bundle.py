"""The library bundled by `pip install ./python` (setup.py builds it with cargo): the installed
package holds it, loads it before any system copy, and LBAGENT_LIBRARY still overrides it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lbagent
from lbagent import _native

PACKAGE = Path(lbagent.__file__).resolve().parent
BUNDLED = PACKAGE / _native.SONAME


def run(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("LBAGENT_LIBRARY", "LD_LIBRARY_PATH")}
    env.update(extra)
    return env


def test_the_installed_package_holds_the_library():
    assert "site-packages" in str(PACKAGE), PACKAGE
    assert BUNDLED.is_file(), f"{BUNDLED}: pip install ./python did not bundle the library"


def test_the_bundled_library_comes_before_a_system_copy(tmp_path):
    # A "system" copy on the dynamic linker's path: this build's own library.
    other = Path(os.environ["LBAGENT_LIBRARY"]).resolve()
    (tmp_path / _native.SONAME).symlink_to(other)
    env = clean_env(LD_LIBRARY_PATH=str(tmp_path))
    assert run("import lbagent; print(lbagent.library_path())", env) == str(BUNDLED)
    # LBAGENT_LIBRARY says otherwise: it wins.
    env = clean_env(LBAGENT_LIBRARY=str(other))
    assert run("import lbagent; print(lbagent.library_path())", env) == str(other)


def test_the_bundled_library_serves_probes():
    code = (
        "import lbagent\n"
        "with lbagent.Agent(listen='127.0.0.1:0', initial_state='up') as a:\n"
        "    a.set_state(lbagent.State.DRAIN, 'bundled')\n"
        "    s = lbagent.probe(f'127.0.0.1:{a.local_port()}', timeout=2)\n"
        "    print(lbagent.library_path(), s.state.name, s.message)\n"
    )
    assert run(code, clean_env()) == f"{BUNDLED} DRAIN bundled"

"""Builds the lbagent package. With the Rust toolchain at hand and the source tree around it
(`pip install ./python` in a checkout), it also builds the library (`cargo build --release`)
and bundles it as lbagent/liblbagent.so.0, which the package loads before any system copy
(LBAGENT_LIBRARY still overrides both): a Python user needs no `make install`.

LBAGENT_BUNDLE: `auto` (default: bundle when cargo is found), `always` (a missing toolchain is
an error), `never` (a pure package that uses the system's library). CARGO names cargo.
"""

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
MANIFEST = HERE.parent / "Cargo.toml"
SONAME = "liblbagent.so.0"


def find_cargo():
    explicit = os.environ.get("CARGO")
    if explicit:
        return explicit
    found = shutil.which("cargo")
    if found:
        return found
    rustup = Path.home() / ".cargo" / "bin" / "cargo"
    return str(rustup) if rustup.exists() else None


def bundling():
    mode = os.environ.get("LBAGENT_BUNDLE", "auto")
    if mode not in ("auto", "always", "never"):
        raise SystemExit(f"LBAGENT_BUNDLE={mode}: expected auto, always or never")
    if mode == "never":
        return None
    cargo = find_cargo()
    if cargo is None or not MANIFEST.exists():
        why = "cargo is not found" if MANIFEST.exists() else f"{MANIFEST} is not there"
        if mode == "always":
            raise SystemExit(f"lbagent: LBAGENT_BUNDLE=always, but {why}")
        print(f"lbagent: not bundling the library ({why}): the package will load the "
              "system's liblbagent.so.0")
        return None
    return cargo


class BuildPy(build_py):
    """Copies the Python files, then builds and adds the library."""

    def run(self):
        super().run()
        cargo = bundling()
        if cargo is None:
            return
        subprocess.run([cargo, "build", "--release", "--lib", "--locked", "--manifest-path",
                        str(MANIFEST)], check=True)
        target = Path(os.environ.get("CARGO_TARGET_DIR", MANIFEST.parent / "target"))
        built = target / "release" / "liblbagent.so"
        dest = Path(self.build_lib) / "lbagent" / SONAME
        shutil.copyfile(built, dest)
        os.chmod(dest, 0o755)
        strip = shutil.which("strip")
        if strip:
            # The release build keeps line tables; the package does not need them.
            subprocess.run([strip, "--strip-unneeded", str(dest)], check=True)


class Platform(Distribution):
    """A bundled library makes the package platform-specific (a wheel per platform)."""

    def has_ext_modules(self):
        return bundling() is not None


setup(cmdclass={"build_py": BuildPy}, distclass=Platform)

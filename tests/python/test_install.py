"""`pip install .` into a fresh virtual environment (no system site-packages: NumPy comes from
pip, torch is absent), then the README's Python example run by that environment's interpreter with
the bundled library (CFLASH_LIBRARY unset). Needs the package index: set CFLASH_SKIP_INSTALL_TEST=1
on a machine without network to skip it."""

import os
import re
import subprocess
import sys
import venv

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(os.environ.get("CFLASH_SKIP_INSTALL_TEST") == "1",
                                reason="CFLASH_SKIP_INSTALL_TEST=1 (no package index reachable)")


def readme_python_example():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    m = re.search(r"^## Python\b(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, "README.md has no '## Python' section"
    blocks = re.findall(r"```python\n(.*?)```", m.group(1), re.S)
    assert blocks, "the README's Python section has no ```python example"
    return blocks[0]


def test_pip_install_and_readme_example(tmp_path):
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        pytest.skip("this python3 cannot create virtual environments with pip (Debian: apt-get install python3-venv)")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = str(env_dir / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CFLASH_", "PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    r = subprocess.run([py, "-m", "pip", "install", "-q", ROOT], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, "pip install . failed:\n%s\n%s" % (r.stdout[-4000:], r.stderr[-4000:])
    example = tmp_path / "example.py"
    example.write_text(readme_python_example())
    r = subprocess.run([py, str(example)], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, "README example failed:\n%s\n%s" % (r.stdout, r.stderr)
    assert r.stdout.strip(), "the README example printed nothing"
    # the installed package uses its bundled library and does not need torch
    check = ("import sys, os, importlib.metadata as md, cflash; lib = cflash.library_path; "
             "assert os.path.dirname(lib) == os.path.dirname(cflash.__file__), lib; "
             "assert md.version('cflash') == cflash.__version__, (md.version('cflash'), cflash.__version__); "
             "assert 'torch' not in sys.modules; print(lib)")
    r = subprocess.run([py, "-c", check], env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert str(env_dir) in r.stdout

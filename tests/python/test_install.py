"""The wheel: `pip wheel .` builds it (scikit-build-core runs CMake), auditwheel repairs it into a
manylinux wheel where auditwheel is installed, and a fresh virtual environment (no system
site-packages: NumPy comes from pip, torch is absent) installs it with no compiler reachable and
runs the README's Python example and the `cflash report` console script with the bundled library
(CFLASH_LIBRARY unset). Needs the package index: set CFLASH_SKIP_INSTALL_TEST=1 on a machine
without network to skip it."""

import glob
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile

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


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CFLASH_", "PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd, env, what, **kw):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    assert r.returncode == 0, "%s failed:\n%s\n%s" % (what, r.stdout[-4000:], r.stderr[-4000:])
    return r


def test_wheel_installs_and_runs_without_a_compiler(tmp_path):
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        pytest.skip("this python3 cannot create virtual environments with pip (Debian: apt-get install python3-venv)")
    env = _env()
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), ROOT], env, "pip wheel .",
         timeout=900)
    (wheel,) = glob.glob(str(dist / "cflash-*.whl"))
    assert re.search(r"-py3-none-linux_\w+\.whl$", wheel), wheel  # one wheel for every Python 3
    with zipfile.ZipFile(wheel) as z:
        assert "cflash/libcflash.so" in z.namelist()
        entry = z.read([n for n in z.namelist() if n.endswith("entry_points.txt")][0]).decode()
        assert "cflash = cflash.__main__:main" in entry
    auditwheel = shutil.which("auditwheel")
    if auditwheel:  # the manylinux form PyPI takes: libgomp vendored, tag from the glibc symbols used
        house = tmp_path / "wheelhouse"
        _run([auditwheel, "repair", "-w", str(house), wheel], env, "auditwheel repair", timeout=300)
        (wheel,) = glob.glob(str(house / "cflash-*.whl"))
        assert re.search(r"-py3-none-manylinux_\d+_\d+_\w+\.whl$", wheel), wheel
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    bindir = str(env_dir / "bin")
    py = os.path.join(bindir, "python")
    # No compiler reachable: only the environment's own bin/ on PATH, and CC pointing nowhere.
    bare = dict(env, PATH=bindir, CC="/nonexistent/cc", CXX="/nonexistent/c++")
    _run([py, "-m", "pip", "install", "-q", "--only-binary", ":all:", wheel], bare, "pip install the wheel",
         timeout=600)
    example = tmp_path / "example.py"
    example.write_text(readme_python_example())
    r = _run([py, str(example)], bare, "README example", cwd=str(tmp_path), timeout=300)
    assert r.stdout.strip(), "the README example printed nothing"
    r = _run([os.path.join(bindir, "cflash"), "report"], bare, "the cflash console script", timeout=120)
    assert "cflash" in r.stdout and "[library]" in r.stdout
    check = ("import sys, os, importlib.metadata as md, cflash; lib = cflash.library_path; "
             "assert os.path.dirname(lib) == os.path.dirname(cflash.__file__), lib; "
             "assert md.version('cflash') == cflash.__version__, (md.version('cflash'), cflash.__version__); "
             "assert 'torch' not in sys.modules; print(lib)")
    r = _run([py, "-c", check], bare, "the installed package", cwd=str(tmp_path), timeout=120)
    assert str(env_dir) in r.stdout

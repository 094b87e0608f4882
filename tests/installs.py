"""Throw-away installs of this checkout, for tests and benchmarks in fresh Python processes.

``build_wheel`` builds the wheel with build directories of its own (a stale ``build/`` in
the checkout cannot leak into it).  ``make_venv`` makes a venv without pip and installs the
wheel, or the checkout in editable mode, into it with pip (offline: ``--no-index --no-deps
--no-build-isolation``).  The venv borrows the heavy packages (ESPnet, torch, pip,
setuptools) of the running interpreter's site-packages through a path line in
``zz_borrowed.pth``: a path added that way is not a site directory, so *its* ``.pth`` files
(this checkout's own editable install, if any) are not processed.  Our package is then
importable only through what was installed into the venv, and registered only by its hook.

``fresh_env`` is the environment for such processes: no ``PYTHONPATH``, no hook switch.
Run them in a directory that does not hold the checkout (``python -m`` puts the current
directory on ``sys.path``).
"""
import os
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOOK_MODULE = "espnet_omnirouter_hook"
HOOK_PTH = HOOK_MODULE + ".pth"
NO_HOOK_ENV = "ESPNET_OMNIROUTER_NO_HOOK"


def _check(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def build_wheel(work_dir: str) -> str:
    """Build this checkout's wheel under ``work_dir``; returns the wheel's path."""
    dist = os.path.join(work_dir, "dist")
    os.makedirs(work_dir, exist_ok=True)
    _check(
        [sys.executable, "setup.py", "-q",
         "egg_info", "--egg-base", work_dir,
         "build", "--build-base", os.path.join(work_dir, "build"),
         "bdist_wheel", "--bdist-dir", os.path.join(work_dir, "bdist"), "--dist-dir", dist],
        cwd=ROOT,
    )
    (wheel,) = [os.path.join(dist, f) for f in os.listdir(dist) if f.endswith(".whl")]
    return wheel


def fresh_env(**extra) -> dict:
    """This process's environment without ``PYTHONPATH`` and the hook switch, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", NO_HOOK_ENV)}
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra)
    return env


def site_packages(venv: str) -> str:
    """The venv's site-packages (purelib)."""
    return sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv})


def venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def make_venv(venv: str, *pip_install_args: str) -> str:
    """A venv that borrows this interpreter's packages, with ``pip install <pip_install_args>``
    run in it (``--ignore-installed``: pip never touches the borrowed packages); returns its
    python."""
    _check([sys.executable, "-m", "venv", "--without-pip", venv])
    borrowed = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    with open(os.path.join(site_packages(venv), "zz_borrowed.pth"), "w") as f:
        f.write("\n".join(borrowed) + "\n")
    python = venv_python(venv)
    if pip_install_args:
        _check(
            [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed",
             "--no-build-isolation", *pip_install_args],
            env=fresh_env(), cwd=venv,
        )
    return python

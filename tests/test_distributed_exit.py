"""A gloo process group is destroyed at a normal exit of a process that imported our package."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Registers a reporter first (atexit runs handlers last-in first-out, so it runs after ours),
# imports our package (or only its exit module), starts a 1-process gloo group, then exits
# normally or with an uncaught exception.
SCRIPT = r"""
import atexit, sys
import torch.distributed as dist
atexit.register(lambda: print("initialized at exit:", dist.is_initialized(), flush=True))
if sys.argv[2] == "package":
    import espnet_omnirouter
elif sys.argv[2] == "module":
    import importlib.util
    spec = importlib.util.spec_from_file_location("distributed_exit", sys.argv[3])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install()
dist.init_process_group("gloo", init_method="file://" + sys.argv[4], rank=0, world_size=1)
if sys.argv[1] == "raise":
    raise RuntimeError("a failing rank")
"""


def run_script(tmp_path, how, importing):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    module = os.path.join(ROOT, "espnet_omnirouter", "distributed_exit.py")
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, how, importing, module, str(tmp_path / "store")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path),
    )


def test_importing_the_package_destroys_a_gloo_group_at_normal_exit(tmp_path):
    out = run_script(tmp_path, "exit", "package")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "initialized at exit: False" in out.stdout


def test_a_failing_process_keeps_its_group_for_pytorchs_own_teardown(tmp_path):
    out = run_script(tmp_path, "raise", "module")
    assert out.returncode == 1 and "a failing rank" in out.stderr
    assert "initialized at exit: True" in out.stdout


def test_without_the_handler_the_group_outlives_the_atexit_handlers(tmp_path):
    """The reporter sees what ESPnet's trainer leaves behind when nothing of ours is imported."""
    out = run_script(tmp_path, "exit", "nothing")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "initialized at exit: True" in out.stdout

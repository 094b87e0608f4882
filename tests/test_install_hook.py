"""The post-import hook (espnet_omnirouter_hook): what the wheel and the editable installs put
into site-packages, that it registers in a fresh process of each, that it stays out of the way
of processes that never import ESPnet and after an uninstall; and its finder's logic, in this
process, on stand-in modules."""
import json
import os
import subprocess
import sys
import types
import zipfile

import pytest

import espnet_omnirouter_hook as hook
from installs import HOOK_MODULE, HOOK_PTH, NO_HOOK_ENV, ROOT, fresh_env, make_venv, site_packages

# What a fresh process has loaded at start-up, before any import of its own.
STARTUP_SCRIPT = """
import json, sys
loaded = sorted(m for m in ("espnet_omnirouter", "espnet2", "espnet", "torch", "numpy") if m in sys.modules)
hook = sys.modules.get("espnet_omnirouter_hook")
import importlib.util
package = importlib.util.find_spec("espnet_omnirouter")
print(json.dumps({"hook": getattr(hook, "__file__", None), "loaded": loaded,
                  "finders": [type(f).__name__ for f in sys.meta_path], "package": package and package.origin}))
"""
# Imports ESPnet's ASR task, nothing of ours, and reports what got registered and from where.
REGISTERS_SCRIPT = """
import json, sys
import espnet2.tasks.asr as asr
ours = sys.modules.get("espnet_omnirouter")
print(json.dumps({"encoders": sorted(k for k in asr.encoder_choices.classes if k.startswith(("switch_", "omni_router_"))),
                  "models": sorted(asr.model_choices.classes), "package": getattr(ours, "__file__", None)}))
"""
REAL_REGISTER = hook.register  # before any test replaces it
ENCODERS = sorted(
    f"{kind}_{family}" for kind in ("switch", "omni_router")
    for family in ("conformer", "transformer", "e_branchformer", "contextual_block_conformer",
                   "contextual_block_transformer")
)


def python_json(python, script, cwd, **env):
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=cwd, env=fresh_env(**env))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


# --------------------------------------------------------------------------------------------
# the wheel


def test_wheel_carries_the_hook_at_its_root_and_in_its_record(installed_wheel):
    with zipfile.ZipFile(installed_wheel["wheel"]) as z:
        names = z.namelist()
        record = next(z.read(n).decode() for n in names if n.endswith(".dist-info/RECORD"))
        pth = z.read(HOOK_PTH).decode()
    assert {HOOK_PTH, HOOK_MODULE + ".py"} <= set(names)
    recorded = {line.split(",")[0] for line in record.splitlines()}
    assert {HOOK_PTH, HOOK_MODULE + ".py"} <= recorded  # so that pip uninstall removes them
    code = [line for line in pth.splitlines() if line and not line.startswith("#")]
    assert len(code) == 1 and code[0].startswith("import ") and HOOK_MODULE in code[0]
    for name in (HOOK_PTH, HOOK_MODULE + ".py"):
        assert os.path.isfile(os.path.join(installed_wheel["site"], name))


def test_installed_hook_is_on_at_startup_and_loads_nothing_heavy(installed_wheel):
    on, _ = python_json(installed_wheel["python"], STARTUP_SCRIPT, installed_wheel["cwd"])
    assert on["hook"] == os.path.join(installed_wheel["site"], HOOK_MODULE + ".py")
    assert on["finders"][0] == "_Finder"
    assert on["loaded"] == []  # not our package, not ESPnet, not torch, not numpy
    assert on["package"] == os.path.join(installed_wheel["site"], "espnet_omnirouter", "__init__.py")
    off, _ = python_json(installed_wheel["python"], STARTUP_SCRIPT, installed_wheel["cwd"], **{NO_HOOK_ENV: "1"})
    assert "_Finder" not in off["finders"] and off["loaded"] == []


def test_importing_our_package_first_still_works_with_the_hook(installed_wheel):
    """Our entry points import espnet_omnirouter, whose registry imports espnet2.tasks.asr: the
    hook then meets our package half imported and must leave the registration to it (no
    warning, no error)."""
    script = (
        "import json, espnet_omnirouter, espnet2.tasks.asr as asr; "
        "print(json.dumps({'loader': type(asr.__loader__).__name__, "
        "'encoders': sorted(k for k in asr.encoder_choices.classes if k.startswith(('switch_', 'omni_router_')))}))"
    )
    out = subprocess.run([installed_wheel["python"], "-W", "error::RuntimeWarning", "-c", script],
                         capture_output=True, text=True, cwd=installed_wheel["cwd"], env=installed_wheel["env"])
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"loader": "_RegisteringLoader", "encoders": ENCODERS}


def editable_venv(venv, *pip_options):
    """The checkout installed editable (``pip install <pip_options> -e``) into a throw-away venv;
    checks that the hook's .pth is in its site-packages and is loaded from the checkout at
    start-up, and returns its python."""
    python = make_venv(venv, *pip_options, "-e", ROOT)
    assert os.path.isfile(os.path.join(site_packages(venv), HOOK_PTH))
    on, _ = python_json(python, STARTUP_SCRIPT, venv)
    assert on["hook"] == os.path.join(ROOT, HOOK_MODULE + ".py")
    assert on["package"] == os.path.join(ROOT, "espnet_omnirouter", "__init__.py")
    assert on["finders"][0] == "_Finder" and on["loaded"] == []
    return python


def test_editable_install_as_make_install_does_registers_in_a_fresh_process(installed_wheel, tmp_path):
    """``pip install -e`` with pip's default (``setup.py develop`` for this project up to pip 25.2).
    (The wheel's install registers in the ESPnet entry-point tests, test_espnet_entry_points.py.)"""
    python = editable_venv(str(tmp_path / "venv"))
    out, _ = python_json(python, REGISTERS_SCRIPT, installed_wheel["cwd"])
    assert out["encoders"] == ENCODERS
    assert "moe_espnet" in out["models"]
    assert out["package"] == os.path.join(ROOT, "espnet_omnirouter", "__init__.py")


def test_pep660_editable_install_carries_the_hook(tmp_path):
    """A PEP 660 editable wheel (pip's only editable mode from pip 25.3 on) gets the .pth too; what
    it then loads at start-up is the same hook module as above, from the checkout."""
    editable_venv(str(tmp_path / "venv"), "--use-pep517")


@pytest.mark.parametrize("editable", [False, True])
def test_uninstall_leaves_python_start_up_silent(installed_wheel, tmp_path, editable):
    """The wheel's RECORD lists the hook, so pip removes it.  ``pip uninstall`` of a
    ``setup.py develop`` install leaves its .pth behind; that .pth finds no hook module and
    stays silent."""
    venv = str(tmp_path / "venv")
    python = make_venv(venv, *(["-e", ROOT] if editable else [installed_wheel["wheel"]]))
    on, _ = python_json(python, STARTUP_SCRIPT, str(tmp_path))
    assert on["hook"] is not None
    out = subprocess.run([python, "-m", "pip", "uninstall", "-y", "espnet_omnirouter"], capture_output=True,
                         text=True, env=fresh_env(), cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    if not editable:
        assert not os.path.exists(os.path.join(site_packages(venv), HOOK_PTH))
        assert not os.path.exists(os.path.join(site_packages(venv), HOOK_MODULE + ".py"))
    off, stderr = python_json(python, STARTUP_SCRIPT, str(tmp_path))
    assert off["hook"] is None and "_Finder" not in off["finders"]
    assert stderr == ""


# --------------------------------------------------------------------------------------------
# the finder, on stand-in modules in this process


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A module ``stand_in_asr_task`` on sys.path as the hook's target, a fresh finder first on
    sys.meta_path, and ``register`` replaced by a recorder of the target's state when called."""
    (tmp_path / "stand_in_asr_task.py").write_text("VALUE = 42\n")
    (tmp_path / "stand_in_other.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("stand_in_asr_task", "stand_in_other"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(hook, "TARGET", "stand_in_asr_task")
    monkeypatch.setattr(sys, "meta_path", [hook._Finder(), *(f for f in sys.meta_path if not isinstance(f, hook._Finder))])
    calls = []
    monkeypatch.setattr(hook, "register", lambda: calls.append(sys.modules["stand_in_asr_task"].VALUE))
    return calls


def test_registers_once_right_after_the_target_has_executed(stand_in):
    import stand_in_other  # noqa: F401

    assert stand_in == []  # other modules pass through untouched
    import stand_in_asr_task

    assert stand_in == [42]  # called once, with the module fully executed
    assert stand_in_asr_task.__loader__.get_source("stand_in_asr_task") == "VALUE = 42\n"  # the real loader's API


def test_a_failing_registration_warns_and_keeps_the_target(stand_in, monkeypatch, tmp_path):
    broken = tmp_path / "broken" / "espnet_omnirouter"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('a broken install')\n")
    monkeypatch.syspath_prepend(str(broken.parent))
    monkeypatch.delitem(sys.modules, "espnet_omnirouter", raising=False)
    monkeypatch.setattr(hook, "register", REAL_REGISTER)
    with pytest.warns(RuntimeWarning, match=rf"could not register .*RuntimeError: a broken install .*{NO_HOOK_ENV}=1"):
        import stand_in_asr_task
    assert stand_in_asr_task.VALUE == 42  # ESPnet itself keeps working


def test_registers_again_when_the_target_runs_again_but_not_while_our_registry_imports(stand_in, monkeypatch):
    """``importlib.reload`` of the task makes fresh class choices: the registry registers again.
    A registry still being imported (it imports the task on its first line) has no ``register``
    yet and is left to finish on its own."""
    import importlib

    calls = []
    monkeypatch.setattr(hook, "register", REAL_REGISTER)
    monkeypatch.setitem(sys.modules, "espnet_omnirouter", types.ModuleType("espnet_omnirouter"))
    monkeypatch.setitem(sys.modules, "espnet_omnirouter.registry", types.SimpleNamespace(register=lambda: calls.append(1)))
    import stand_in_asr_task

    importlib.reload(stand_in_asr_task)
    assert calls == [1, 1]
    monkeypatch.setitem(sys.modules, "espnet_omnirouter.registry", types.SimpleNamespace())  # half imported
    importlib.reload(stand_in_asr_task)
    assert calls == [1, 1]


def test_install_when_the_target_is_already_imported_and_the_switch(stand_in, monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, hook._Finder)])
    monkeypatch.setitem(sys.modules, "stand_in_asr_task", types.SimpleNamespace(VALUE=1))
    monkeypatch.setenv(NO_HOOK_ENV, "1")
    assert hook.install() is False
    assert stand_in == [] and not any(isinstance(f, hook._Finder) for f in sys.meta_path)
    monkeypatch.setenv(NO_HOOK_ENV, "0")
    assert hook.install() is True and hook.install() is True
    assert stand_in == [1, 1]  # registered at once (each call; registration is idempotent)
    assert sum(isinstance(f, hook._Finder) for f in sys.meta_path) == 1  # but one finder only


@pytest.mark.parametrize("value, off", [("", False), ("0", False), ("1", True), ("yes", True)])
def test_switch_values(monkeypatch, value, off):
    monkeypatch.setenv(NO_HOOK_ENV, value)
    assert hook.disabled() is off

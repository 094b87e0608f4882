"""espnet_omnirouter: Switch and Omni-router Mixture-of-Experts encoders for ESPnet ASR.

Besides the package, every install puts ``espnet_omnirouter_hook.pth`` into site-packages:
at start-up it imports ``espnet_omnirouter_hook``, a post-import hook that registers our
encoders and model whenever ``espnet2.tasks.asr`` is imported, so that ESPnet's own entry
points and espnet_model_zoo find them.  The three commands below ship that file with a
wheel (``build_py``), a legacy ``setup.py develop`` editable install (``develop``) and a
PEP 660 editable wheel (``editable_wheel``).
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

HOOK_PTH = "espnet_omnirouter_hook.pth"
# A .pth line that starts with "import" is executed by `site`.  A missing hook module (the
# package removed, the .pth left behind, as `pip uninstall` leaves it after a develop
# install) is skipped in silence; any other error is reported by `site` as usual.
HOOK_PTH_TEXT = (
    "# espnet_omnirouter: registers its encoders when espnet2.tasks.asr is imported "
    "(espnet_omnirouter_hook.py); off with ESPNET_OMNIROUTER_NO_HOOK=1\n"
    "import sys; exec(\"try:\\n import espnet_omnirouter_hook\\n"
    "except ModuleNotFoundError as e:\\n if e.name != 'espnet_omnirouter_hook': raise\")\n"
)


def _write_hook_pth(directory: str) -> str:
    path = os.path.join(directory, HOOK_PTH)
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(HOOK_PTH_TEXT)
    return path


class BuildPyWithHook(build_py):
    """build_py that also puts the hook's .pth at the root of build_lib (= the wheel's purelib)."""

    def run(self):
        super().run()
        _write_hook_pth(self.build_lib)

    def get_outputs(self, include_bytecode=1):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, HOOK_PTH)]


class DevelopWithHook(develop):
    """``setup.py develop`` (pip's legacy editable install) that also writes the hook's .pth into
    the install dir; ``--uninstall`` removes it again (``pip uninstall`` does not: it leaves a
    .pth that finds no hook module and does nothing)."""

    def run(self):
        super().run()
        path = os.path.join(self.install_dir, HOOK_PTH)
        if self.uninstall:
            if os.path.exists(path):
                os.remove(path)
        else:
            _write_hook_pth(self.install_dir)


def _editable_wheel_with_hook():
    """setuptools' PEP 660 ``editable_wheel`` (setuptools >= 64) with the hook's .pth added to the
    editable wheel.  setuptools puts only its own path entries there, so the strategy it picks is
    wrapped; if a setuptools version no longer calls the wrapped method, the build fails loudly
    instead of making an install without the hook."""
    try:
        from setuptools.command.editable_wheel import editable_wheel
    except ImportError:  # setuptools < 64 has no PEP 660 support
        return {}

    class AddHook:
        def __init__(self, strategy, command):
            self.strategy, self.command = strategy, command

        def __enter__(self):
            self.strategy.__enter__()
            return self

        def __exit__(self, *exc):
            return self.strategy.__exit__(*exc)

        def __call__(self, wheel, files, mapping):
            self.strategy(wheel, files, mapping)
            wheel.writestr(HOOK_PTH, HOOK_PTH_TEXT.encode("utf-8"))
            self.command.hook_added = True

    class EditableWheelWithHook(editable_wheel):
        hook_added = False

        def _select_strategy(self, *args, **kwargs):
            return AddHook(super()._select_strategy(*args, **kwargs), self)

        def run(self):
            super().run()
            if not self.hook_added:
                raise RuntimeError(
                    f"this setuptools' editable_wheel did not let setup.py add {HOOK_PTH}; "
                    "install without -e, or with pip's legacy editable mode (setup.py develop)"
                )

    return {"editable_wheel": EditableWheelWithHook}


# Pinned, tested together on Python 3.11.  ESPnet 202511 pins setuptools<74 and imports
# torchaudio from espnet2.tasks.asr without declaring it, so the matched torch/torchaudio
# pair is pinned here.
install_requires = [
    "espnet==202511",
    "torch==2.11.0",
    "torchaudio==2.11.0",
    "setuptools<74",
    "sentencepiece",
    "espnet_model_zoo",
    "jiwer",
    "soundfile",
    # espnet's defaults --use_tensorboard true / --use_matplotlib true need these
    "tensorboard",
    "matplotlib",
]

setup(
    name="espnet_omnirouter",
    version="0.1.0",
    description="Switch and Omni-router Mixture-of-Experts encoders for ESPnet ASR",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["espnet_omnirouter", "espnet_omnirouter.*", "espnet_omnirouter_onnx"]),
    py_modules=["espnet_omnirouter_hook"],
    # C source of the CPU inference kernels, compiled at first use (espnet_omnirouter/moe/native.py)
    package_data={"espnet_omnirouter.moe": ["native_cpu.c"]},
    cmdclass={"build_py": BuildPyWithHook, "develop": DevelopWithHook, **_editable_wheel_with_hook()},
    python_requires=">=3.11,<3.12",
    install_requires=install_requires,
    extras_require={
        "test": ["pytest", "hypothesis"],
        "plot": ["matplotlib"],
        # ONNX export (torch.onnx's dynamo exporter needs onnxscript) and its check with onnxruntime;
        # the exported graphs use opset 18 (espnet_omnirouter/export/encoder.py)
        "onnx": ["onnx==1.23.2", "onnxscript==0.7.2", "onnxruntime==1.32.0"],
    },
    license="Apache-2.0",
)

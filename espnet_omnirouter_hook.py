"""Register espnet_omnirouter whenever ``espnet2.tasks.asr`` is imported (post-import hook).

The installed ``espnet_omnirouter_hook.pth`` imports this module when Python starts.  It
puts a finder at the front of ``sys.meta_path`` that answers for exactly one module,
``espnet2.tasks.asr``: it lets the other finders find it, and wraps the loader so that,
right after the module has executed, ``import espnet_omnirouter`` adds our encoders and
model to its class choices.  So ESPnet's own entry points (``python -m espnet2.bin.asr_train``,
``asr_inference``, ``pack``), espnet_model_zoo and spawned DDP workers find them without
any import of ours in user code.

This module must stay cheap: it imports only ``os`` and ``sys`` (already loaded by
``site``), never ESPnet or torch, so a Python process that never imports ESPnet pays only
for importing this small module at start-up (``benchmarks/startup_hook.py`` measures it).
``ESPNET_OMNIROUTER_NO_HOOK=1`` (any value but empty or ``0``) turns
the hook off; then only an explicit ``import espnet_omnirouter`` registers.
"""
import os
import sys

TARGET = "espnet2.tasks.asr"
DISABLE_ENV = "ESPNET_OMNIROUTER_NO_HOOK"


def disabled() -> bool:
    """True when ``$ESPNET_OMNIROUTER_NO_HOOK`` is set to anything but empty or ``0``."""
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def register() -> None:
    """Import espnet_omnirouter (its import registers) and register again if it was imported before.

    Registering again covers a task module executed anew (``importlib.reload``: fresh class
    choices, our package long imported).  When the import of ``espnet2.tasks.asr`` came from
    espnet_omnirouter itself (its registry imports the task first thing), the package is in
    ``sys.modules`` half initialised and its registry has no ``register`` yet: the package's
    own import then finishes the registration.  A failure of our package must not break
    ESPnet for users of its own encoders: it is reported as a warning that names the cause
    and the switch.
    """
    try:
        import espnet_omnirouter  # noqa: F401

        registry = sys.modules.get("espnet_omnirouter.registry")
        if hasattr(registry, "register"):
            registry.register()  # idempotent
    except Exception as exc:  # noqa: BLE001  (reported, not hidden)
        import warnings

        warnings.warn(
            f"espnet_omnirouter is installed but could not register its encoders in {TARGET}: "
            f"{type(exc).__name__}: {exc} (set {DISABLE_ENV}=1 to stop trying)",
            RuntimeWarning,
            stacklevel=2,
        )


class _RegisteringLoader:
    """Wraps the real loader of ``espnet2.tasks.asr``; registers after it has executed."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register()

    def __getattr__(self, name):  # get_source, get_filename, ... as the real loader has them
        return getattr(self._loader, name)


class _Finder:
    """A ``sys.meta_path`` finder that only ever answers for ``espnet2.tasks.asr``."""

    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def install() -> bool:
    """Put the finder on ``sys.meta_path`` (once); register at once if ESPnet's ASR task is
    already imported.  Returns False when switched off by ``$ESPNET_OMNIROUTER_NO_HOOK``."""
    if disabled():
        return False
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
    if TARGET in sys.modules:
        register()
    return True


install()

"""Destroy a gloo process group at a normal interpreter exit, as ESPnet's trainer does not.

``espnet2.bin.asr_train`` under ``torch.distributed.run`` initialises the default process
group and returns without ``torch.distributed.destroy_process_group()``.  With gloo (ESPnet's
CPU DDP), a worker that finishes first then tears its group down during interpreter
finalisation, and that can abort the process after a finished training (SIGABRT, "terminate
called without an active exception"; seen once in our CI on the 2-process DDP test, the run's
checkpoints all written).  PyTorch's documentation asks to destroy the group before exit.

:func:`install` (run by ``import espnet_omnirouter``, hence by the import hook in every ESPnet
process) registers :func:`destroy_gloo_group_at_exit` with :mod:`atexit`, which runs while the
interpreter is still whole.  It acts only when the default group is initialised with the gloo
backend and the process ends without an uncaught exception; a failing rank keeps PyTorch's own
teardown, and NCCL groups are left to their owners.
"""
import atexit
import sys

_installed = False


def destroy_gloo_group_at_exit() -> None:
    """``destroy_process_group()`` if the default group is gloo and no exception is uncaught."""
    dist = sys.modules.get("torch.distributed")  # never imports torch at exit
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    if getattr(sys, "last_value", None) is not None:  # set when an uncaught exception was printed
        return
    if dist.get_backend() != "gloo":
        return
    dist.destroy_process_group()


def install() -> None:
    """Register :func:`destroy_gloo_group_at_exit` with :mod:`atexit` (once per process)."""
    global _installed
    if not _installed:
        atexit.register(destroy_gloo_group_at_exit)
        _installed = True

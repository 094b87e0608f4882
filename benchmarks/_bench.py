"""Shared helpers of the benchmark scripts: machine description, timing, peak memory.

Timing: every case runs its variants interleaved (dense, moe, loop, ..., dense, moe, ...)
for ``warmup`` rounds that are discarded and ``repeats`` rounds that are kept; a variant's
time is the median of its kept rounds.  Interleaving makes load from other processes hit
all variants alike, so that ratios stay fair on a shared machine.

Peak memory: extra tensor memory at the high-water mark of one forward+backward step,
relative to the memory held just before the step (parameters and inputs, no gradients:
the step allocates them, so they count).
  * CUDA: ``torch.cuda.max_memory_allocated() - memory_allocated()`` (before the step,
    after ``reset_peak_memory_stats``).
  * CPU: the same quantity from the CPU allocator's own accounting: the step runs once
    under ``torch.profiler`` with ``profile_memory=True``; every tensor allocation and
    free is an event with its size, and the peak is the maximum of their running sum.
    It counts tensor storage exactly, like the CUDA number, and nothing else (not the
    interpreter, not library workspaces, not allocator caching), so it does not depend
    on the order in which cases run in one process.  (``ru_maxrss`` of a fresh process
    per case would also include those and needs one interpreter + ESPnet import per
    measurement; ``tracemalloc`` does not see tensor storage at all.)
"""
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch


# git pathspecs of tracked files that git_commit() does not count as changes
NOT_CODE = (":(exclude)benchmarks/results", ":(exclude,glob)**/*.md")


# environment variables recorded with the machine: allocator and threading settings
TUNING_ENV = ("MALLOC_", "OMP_", "MKL_", "KMP_", "THP_MEM_ALLOC", "LD_PRELOAD", "PYTORCH_CUDA_ALLOC")


def git_commit() -> Optional[str]:
    """Short hash of the checked-out commit (None outside a git checkout), with "+changes"
    when tracked files other than results and Markdown (:data:`NOT_CODE`) differ from it:
    a run that writes its JSON, or an edit of a README, does not change what is measured."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        git = ["git", "-C", root]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        changed = subprocess.run(git + ["diff", "--quiet", "HEAD", "--", ".", *NOT_CODE], capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+changes" if changed else "")


def machine_info(device: torch.device) -> Dict[str, object]:
    """What the numbers were measured on."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    info = {
        "cpu_model": model,
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else model,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "commit": git_commit(),
        # allocator and threading settings that change the timings
        "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(TUNING_ENV)},
    }
    try:
        info["loadavg_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    return info


def cpu_pressure() -> Dict[str, float]:
    """How busy the machine was (others' processes included): 1-min load average and the
    share of time some runnable task waited for a CPU over the last 10 s (Linux PSI)."""
    out = {}
    try:
        out["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    fields = dict(kv.split("=") for kv in line.split()[1:])
                    out["psi_some_avg10"] = float(fields["avg10"])
                    out["psi_some_total_us"] = int(fields["total"])
    except (OSError, ValueError, IndexError):
        pass
    return out


def wait_quiet(max_psi: float, max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until other processes leave the CPUs mostly idle: PSI
    ``some avg10`` below ``max_psi`` percent.  Returns the seconds waited.  A no-op where
    ``max_psi`` <= 0 or PSI is unavailable."""
    if max_psi <= 0:
        return 0.0
    t0 = time.time()
    while time.time() - t0 < max_wait_s:
        psi = cpu_pressure().get("psi_some_avg10")
        if psi is None or psi < max_psi:
            break
        time.sleep(2.0)
    return time.time() - t0


def run_quietly(measure: Callable[[], object], max_psi: float, max_wait_s: float, retries: int):
    """Run ``measure()``; with ``max_psi`` > 0, first wait for a quiet machine
    (:func:`wait_quiet`), and run it again (up to ``retries`` more times) when other
    processes made runnable tasks wait for a CPU more than ``max_psi`` percent of the time
    while it ran (Linux PSI ``some`` stall time over wall time).

    Returns ``(result, info)``; ``info`` has the stall percentage of the kept run
    (``stall_pct``, None without PSI), the attempts, the seconds waited and the pressure
    before/after.
    """
    info = {"attempts": 0, "waited_s": 0.0}
    while True:
        info["waited_s"] += wait_quiet(max_psi, max_wait_s)
        before, t0 = cpu_pressure(), time.time()
        result = measure()
        after, wall = cpu_pressure(), time.time() - t0
        info["attempts"] += 1
        stall = None
        if "psi_some_total_us" in before and "psi_some_total_us" in after and wall > 0:
            stall = 100.0 * (after["psi_some_total_us"] - before["psi_some_total_us"]) / (wall * 1e6)
        info.update(stall_pct=stall, pressure_before=before, pressure_after=after)
        if max_psi <= 0 or stall is None or stall <= max_psi or info["attempts"] > retries:
            return result, info
        print(f"#   CPU stall {stall:.0f}% > {max_psi:g}% while measuring: again", flush=True)



def add_common_args(parser, warmup: int = 1) -> None:
    """The options both benchmarks share: rounds, threads, device, memory pass, quiet gating, seed, output."""
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument(
        "--quiet-psi", type=float, default=0.0,
        help="before each case, wait until CPU pressure from other processes (PSI some avg10, %%) "
        "is below this, and time it again if the stall while timing exceeded it; 0 = off",
    )
    parser.add_argument("--quiet-wait-s", type=float, default=60.0, help="longest wait for --quiet-psi")
    parser.add_argument(
        "--quiet-retries", type=int, default=2,
        help="with --quiet-psi: measure a case again when CPU stall while timing it exceeded --quiet-psi",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON output path")

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: Dict[str, Callable[[], None]],
    device: torch.device,
    warmup: int,
    repeats: int,
    max_step_s: float = 0.0,
    budget_s: float = 0.0,
    min_repeats: int = 3,
) -> Tuple[Dict[str, List[float]], Dict[str, float]]:
    """Seconds per call of each step, rounds interleaved; warm-up rounds dropped.

    Round ``r`` starts with step ``r mod len(steps)`` (the order is rotated), so that every
    step takes every position in a round in turn (none is always first after the warm-up of
    the others, or always last); each still follows the same step in most rounds.

    A step whose first call takes longer than ``max_step_s`` (> 0) is not run again; it
    is returned in the second dict with that time, and has no times.  With ``budget_s``
    (> 0), the number of timed rounds is cut so that they take about that long (judged
    from the last warm-up round), but never below ``min_repeats``.
    """
    times = {name: [] for name in steps}
    slow = {}
    rounds, r = warmup + repeats, 0
    while r < rounds:
        round_s = 0.0
        names = list(steps)
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            step = steps[name]
            if name in slow:
                continue
            synchronize(device)
            t0 = time.perf_counter()
            step()
            synchronize(device)
            seconds = time.perf_counter() - t0
            round_s += seconds
            if r >= warmup:
                times[name].append(seconds)
            if r == 0 and max_step_s > 0 and seconds > max_step_s:
                slow[name] = seconds
        if r == warmup - 1 and budget_s > 0 and round_s > 0:
            rounds = warmup + max(min(min_repeats, repeats), min(repeats, int(budget_s / round_s)))
        r += 1
    return {n: t for n, t in times.items() if n not in slow}, slow


def median(xs: List[float]) -> float:
    return statistics.median(xs)


def page_faults(step: Callable[[], None], rounds: int = 3) -> float:
    """Minor page faults of this process per call of ``step()`` (Linux/Unix ``ru_minflt``),
    median of ``rounds`` calls.  Each is a fresh 4 KiB page that the kernel maps and zeroes,
    e.g. for a large tensor that the C allocator took from ``mmap`` instead of reusing
    memory freed by the previous step (glibc does so above 32 MiB)."""
    import resource

    counts = []
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return statistics.median(counts)


def peak_memory(step: Callable[[], None], device: torch.device) -> int:
    """Bytes of extra tensor memory at the peak of ``step()`` (see the module docstring).

    ``step.zero`` (if any) runs first, outside the measurement: it drops the previous
    step's gradients, which ``step()`` itself would otherwise free inside it (making its
    peak look smaller by their size).
    """
    if getattr(step, "zero", None) is not None:
        step.zero()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    allocations = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    allocations.sort(key=lambda a: a[0])
    current = peak = 0
    for _, size in allocations:
        current += size
        peak = max(peak, current)
    return peak

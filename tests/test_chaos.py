"""Chaos on the real SLURM cluster: a detached grid and a detached Optuna search, each under at least 12 faults
drawn from a seed (`random.Random(seed)`; `--chaos-seeds N` runs seeds 0..N-1), each at a state the test waits for
(a run held at the gate after an epoch, a job queued), never after a sleep:

- `scancel` of one of the sweep's queued or running SLURM jobs (its results job too);
- `scontrol requeue` of a running one;
- SIGKILL of a run's training process (the pid its run dir's lock file names, checked against /proc/locks);
- SIGKILL of `fmsweep resume` amid its submission (FMSWEEP_TEST_CRASH=<point>:<n>), and of the first launch;
- squeue (and at random sacct, sbatch) failing, through wrappers first on the PATH of the fmsweep commands: status
  says unknown where SLURM may still run a job (never a stopped or pending guess), resume is one line, exit 2, and
  submits nothing;
- two `fmsweep resume` at once: one is refused naming the holder of the launch lock, or both succeed, and nothing is
  submitted twice.

The runs advance only as the test lets them: the gate holds every run after each epoch (hold(1)), and between two
faults the test lets a random held run go on by one epoch. Then the gate opens, `fmsweep resume` and `fmsweep status
--watch` run as a user would run them, and the invariants are checked: every job (trial) completed exactly once
(metrics.json, history.csv and TensorBoard each with epochs 1..E once); never two processes training one run dir (a
sampler, see TwoTrainers); every SLURM job named after the sweep is one its record's submissions name; at most one
results job queued or running at a time, the last one COMPLETED after every job ended, and report.md written after
them; the final status agrees with the
files; a search's study holds exactly n_trials trials, all complete. Each case prints the faults it survived by kind;
the module's last line sums them."""

from __future__ import annotations

import contextlib
import getpass
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import ROOT, Gate, fast_overrides, needs_cluster, wait_for
from optuna.trial import TrialState
from test_durable import history_epochs, tensorboard_epochs
from test_slurm import CPU_SLURM

from fmsweep.sweep import lock, storage
from fmsweep.sweep.manifest import JobRecord
from fmsweep.sweep.status import SLURM_ENDED, label, shared_overrides

EPOCHS = 3
GRID = ["model=linear,fc", "seed=0,1,2"]  # 6 jobs
N_TRIALS, N_WORKERS = 8, 2
SEARCH = [
    "model=linear",
    "optimizer.lr=tag(log,interval(1e-4,1e-1))",
    "hydra/sweeper=optuna",
    f"hydra.sweeper.n_trials={N_TRIALS}",
    f"hydra.sweeper.n_jobs={N_WORKERS}",
]
MIN_FAULTS = 12
KINDS = ("scancel", "requeue", "sigkill", "crash", "slurm-down", "two-resumes")
WEIGHTS = (3, 2, 3, 2, 1, 1)  # of the faults drawn beyond one of each kind
CRASH_POINTS = ("before-sbatch", "after-sbatch")
SILENT = "slurm_load_jobs error: Socket timed out on send/recv operation"
SLURM_COMMANDS = ("squeue", "sacct", "sbatch")
ALL_STATES = "BF,CA,CD,DL,F,NF,OOM,PD,PR,R,RQ,RS,RV,S,TO"  # sacct -s: every state a job can be in
WAIT_S = 600  # only a guard against a hang: every wait is for a state
RESUME_ROUNDS = 4  # resume + watch rounds at the end before the sweep must be over


class Queued(NamedTuple):
    """A SLURM job of the sweep as squeue lists it (array tasks one by one)."""

    id: str
    state: str
    name: str


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie has: its files, the run dir's lock among them, are closed)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class TwoTrainers:
    """A sampler that looks, every `every` s, which processes hold each run dir's lock file open, by path (a lock
    file unlinked or replaced under its holder counts too: ` (deleted)`). A run opens its lock file in lock.hold and
    keeps it open for the whole of its training, and nowhere else is it kept open: a refused second trainer
    (lock.take) and a status (lock.holder_of) open it, try the flock without waiting and close it within milliseconds.
    So two processes that both keep one run dir's lock file open for `span` s are two trainers of that dir. Trainers
    here wait at the test's gate after every epoch, for as long as the test holds them: two trainers of one dir would
    be seen together for seconds, not for one sample. (The history and TensorBoard checks, each epoch once, catch a
    second writer afterwards too.)"""

    def __init__(self, sweep_dir: Path, every: float = 0.1, span: float = 1.0) -> None:
        self.prefix, self.every, self.span = f"{sweep_dir}/", every, span
        self.together: dict[tuple[str, int, int], float] = {}  # (run dir, pid, pid) -> first seen together
        self.violations: list[str] = []
        self.samples = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def holders(self) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if not Path(entry.path, "comm").read_text().startswith("python"):
                    continue
                fds = os.listdir(Path(entry.path, "fd"))
            except OSError:
                continue
            for fd in fds:
                with contextlib.suppress(OSError):
                    target = os.readlink(Path(entry.path, "fd", fd)).removesuffix(" (deleted)")
                    if target.startswith(self.prefix) and target.endswith(f"/{lock.LOCK}"):
                        found.setdefault(target[len(self.prefix) :].split("/")[0], set()).add(int(entry.name))
        return found

    def loop(self) -> None:
        while not self.done.is_set():
            now = time.monotonic()
            pairs = {(run, a, b) for run, pids in self.holders().items() for a in pids for b in pids if a < b}
            self.together = {pair: self.together.get(pair, now) for pair in pairs}
            for (run, a, b), since in self.together.items():
                said = f"{run}: pids {a} and {b} both hold its lock file open"
                if now - since >= self.span and not any(v.startswith(said) for v in self.violations):
                    self.violations.append(f"{said} (for {now - since:.1f} s and on)")
            self.samples += 1
            self.done.wait(self.every)

    def __enter__(self) -> TwoTrainers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


class Chaos:
    """One sweep (`kind` grid or search) under the faults of one seed: the state it waits for, the faults, the
    problems found (checked at the end, all of them reported at once) and the faults survived by kind."""

    def __init__(self, kind: str, seed: int, sweep_dir: Path, gate: Gate, scratch: Path) -> None:
        self.kind, self.seed, self.sweep_dir, self.gate = kind, seed, sweep_dir, gate
        self.rng = random.Random(seed)
        self.expected = 6 if kind == "grid" else N_TRIALS
        self.survived: Counter[str] = Counter()
        self.problems: list[str] = []
        self.log: list[str] = []
        self.seen: dict[str, str] = {}  # every SLURM job of the sweep squeue showed: id -> name
        self.started: set[str] = set()  # those it showed running (accounting lists them; an array task cancelled
        # before it started has no record of its own there)
        self.reported_by_resume = False  # a resume wrote the results itself (nothing of the sweep alive)
        self.dirty = False  # a job killed or cancelled since the last resume: a resume has something to submit
        self.t0 = time.monotonic()
        # the failing SLURM commands: wrappers first on the PATH of the fmsweep commands this test runs
        self.bin, self.down = scratch / "bin", scratch / "down"
        self.bin.mkdir(parents=True)
        self.down.mkdir()
        for command in SLURM_COMMANDS:
            real = shutil.which(command)
            assert real, f"{command} is not on the PATH"
            wrapper = self.bin / command
            wrapper.write_text(
                f'#!/bin/sh\nif [ -e "{self.down / command}" ]; then\n  echo "{SILENT}" >&2\n  exit 1\nfi\n'
                f'exec "{real}" "$@"\n'
            )
            wrapper.chmod(0o755)

    # --- what the test reads ---------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A line of the case's log, printed as it happens (visible with -s)."""
        self.log.append(f"chaos {self.kind} {self.seed} {time.monotonic() - self.t0:6.1f}s {text}")
        print(self.log[-1], flush=True)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.say(f"PROBLEM: {text}")

    def record(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.sweep_dir / "sweep.json").read_text()))
        except FileNotFoundError:
            return {}

    def jobs(self) -> list[JobRecord]:
        fields = JobRecord.__dataclass_fields__
        return [JobRecord(**{k: v for k, v in job.items() if k in fields}) for job in self.record().get("jobs", [])]

    def mine(self, name: str, sweep_id: str | None) -> bool:
        """Whether a SLURM job name is one of this sweep's: it carries the sweep dir's (unique) name or its id."""
        return self.sweep_dir.name in name or bool(sweep_id and f":{sweep_id}." in name)

    def queue(self) -> list[Queued]:
        """The sweep's SLURM jobs that squeue lists queued or running (the real squeue, never the wrapper)."""
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T|%j"], capture_output=True, text=True, check=True
        ).stdout
        jobs = [Queued(*f) for f in (line.split("|", 2) for line in out.splitlines()) if len(f) == 3]
        sweep_id = self.record().get("sweep_id")
        mine = [job for job in jobs if self.mine(job.name, sweep_id) and job.state not in SLURM_ENDED]
        self.seen.update((job.id, job.name) for job in mine)
        self.started.update(job.id for job in mine if job.state == "RUNNING")
        return mine

    def submission_kind(self, job_id: str) -> str | None:
        array = job_id.partition("_")[0]
        return next((s["kind"] for s in self.record().get("submissions", []) if s.get("id") == array), None)

    def is_results(self, job: Queued) -> bool:
        kind = self.submission_kind(job.id)
        return kind == "results" if kind else "results" in job.name or job.id == self.record().get("finish_job")

    def working(self) -> list[Queued]:
        """The sweep's jobs and workers that SLURM queues or runs (not its results job)."""
        return [job for job in self.queue() if not self.is_results(job)]

    def lock_holder(self, run_dir: Path) -> tuple[int, str] | None:
        """(pid, SLURM job) of the process that holds the run dir's lock now, from its lock file, checked against the
        kernel's /proc/locks (the pid holds a flock on that very file); None when no process holds it."""
        path = run_dir / lock.LOCK
        try:
            text, inode = path.read_text(), path.stat().st_ino
        except OSError:
            return None
        found = re.match(r"pid (\d+) on \S+?(?:, SLURM job (\S+?))?, since", text)
        if not found:
            return None
        pid = int(found.group(1))
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] != "->" and fields[4] == str(pid) and fields[5].endswith(f":{inode}"):
                return pid, found.group(2) or ""
        return None

    def held_runs(self) -> dict[str, tuple[int, int, str]]:
        """The runs waiting at the gate now: run dir name -> (epoch, pid, SLURM job). A marker counts while its run's
        lock is held and its history ends at the marker's epoch (a killed run's marker is stale)."""
        held = {}
        for marker in self.gate.folder.glob("*@*"):
            name, _, epoch = marker.name.rpartition("@")
            run_dir = self.sweep_dir / name
            holder = self.lock_holder(run_dir)
            with contextlib.suppress(OSError, ValueError, IndexError):
                if holder and history_epochs(run_dir)[-1] == int(epoch):
                    held[name] = (int(epoch), *holder)
        return held

    def completed(self, name: str) -> bool:
        try:
            metrics = json.loads((self.sweep_dir / name / "metrics.json").read_text())
        except (OSError, ValueError):
            return False
        return metrics.get("status") == "completed" and metrics.get("epochs_run") == EPOCHS

    def unfinished(self) -> bool:
        return sum(self.completed(job.name) for job in self.jobs()) < self.expected

    def settle(self) -> None:
        """Wait for a state to act on: a run held at the gate, or nothing of the sweep queued or running."""
        wait_for(
            f"{self.kind} seed {self.seed}: a held run or a still queue",
            lambda: self.held_runs() or not self.working(),
            WAIT_S,
            every=0.2,
        )

    # --- the commands a user runs --------------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", **extra}

    def fmsweep(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "fmsweep.cli", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            env=self.env(**extra),
        )

    def launch(self, args: list[str]) -> None:
        """The first launch, detached; SIGKILLed amid its submission for some seeds."""
        extra = {}
        if self.rng.random() < 0.5:
            extra["FMSWEEP_TEST_CRASH"] = f"{self.rng.choice(CRASH_POINTS)}:1"
        proc = subprocess.run(
            [sys.executable, "-m", "fmsweep", "-m", *args, f"hydra.sweep.dir={self.sweep_dir}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            env=self.env(**extra),
        )
        if extra and proc.returncode == -signal.SIGKILL:
            self.survived["crash"] += 1
            self.dirty = True
            self.say(f"first launch SIGKILLed at {extra['FMSWEEP_TEST_CRASH']}")
        elif extra:
            self.problem(
                f"first launch with FMSWEEP_TEST_CRASH={extra['FMSWEEP_TEST_CRASH']} was not SIGKILLed: "
                f"exit {proc.returncode}"
            )
        else:
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
            self.say("first launch submitted")
        assert (self.sweep_dir / "sweep.json").is_file(), proc.stdout[-2000:] + proc.stderr[-3000:]

    def resume(self, why: str) -> None:
        """`fmsweep resume DIR` as a user runs it after faults: it must succeed and submit nothing twice."""
        proc = self.fmsweep("resume", str(self.sweep_dir))
        self.say(f"resume ({why}): exit {proc.returncode}")
        self.reported_by_resume |= "fmsweep: report: " in proc.stdout
        if proc.returncode != 0:
            self.problem(f"fmsweep resume ({why}) exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
        else:
            self.dirty = False
            self.check_no_double(f"after a resume ({why})")

    def check_no_double(self, when: str) -> None:
        """Nothing submitted twice: every job and worker SLURM queues or runs is one the record names (a grid's job's
        launcher job, a search's worker), and a search has at most n_jobs workers alive."""
        record = self.record()
        named = {job["launcher_job"] for job in record.get("jobs", [])} | set(record.get("workers", []))
        alive = self.working()
        strays = sorted(job.id for job in alive if job.id not in named)
        if strays:
            self.problem(f"{when}: SLURM runs {strays}, which no job or worker of the record names")
        results = [job.id for job in self.queue() if self.is_results(job)]
        if len(results) > 1:
            self.problem(f"{when}: {len(results)} results jobs queued or running at once: {results}")
        if self.kind == "search" and len(alive) > N_WORKERS:
            self.problem(
                f"{when}: {len(alive)} workers queued or running ({[j.id for j in alive]}), n_jobs={N_WORKERS}"
            )

    # --- the faults --------------------------------------------------------------------------------------------

    def target(self, running: bool) -> bool:
        """Wait for something to hit: a run held at the gate (`running`), or also a queued job; where nothing of the
        sweep is alive but work is left, resume it first, as a user would. False once the sweep has nothing left."""
        for _ in range(3):
            self.settle()
            if self.held_runs() or (not running and self.queue()):
                return True
            if not self.unfinished():
                return False
            self.resume("nothing alive")
        return False

    def forget(self, name: str) -> None:
        """Drop the gate markers of a run that was stopped: its next incarnation writes its own."""
        for marker in self.gate.folder.glob(f"{glob.escape(name)}@*"):
            marker.unlink(missing_ok=True)

    def advance(self) -> None:
        """Let one random run held before its last epoch go on by an epoch (where none is held, wait for one). A run
        held after its last epoch stays there until the faults are over: the sweep must not end before them."""
        if not self.target(running=True):
            return
        held = {name: at for name, at in self.held_runs().items() if at[0] < EPOCHS}
        if held:
            name = self.rng.choice(sorted(held))
            (self.gate.folder / f"{name}@{held[name][0]}").unlink(missing_ok=True)
            self.say(f"let {name} go on after epoch {held[name][0]}")

    def fault_scancel(self) -> bool:
        if not self.target(running=False):
            return False
        held = self.held_runs()
        jobs = sorted((job for job in self.queue() if job.state in ("PENDING", "RUNNING")), key=lambda job: job.id)
        old = {slurm_job for epoch, _, slurm_job in held.values() if epoch >= EPOCHS}
        if not jobs:
            return False
        job = self.rng.choice([job for job in jobs if job.id not in old] or jobs)
        runs = {name: pid for name, (_, pid, slurm_job) in held.items() if slurm_job == job.id}
        done = subprocess.run(["scancel", job.id], capture_output=True, text=True)
        if done.returncode != 0:
            self.say(f"scancel {job.id} refused: {done.stderr.strip()}")
            return False
        wait_for(
            f"{job.id} to end",
            lambda: all(gone(pid) for pid in runs.values()) and job.id not in {j.id for j in self.queue()},
            WAIT_S,
            every=0.2,
        )
        for name in runs:
            self.forget(name)
        what = "results job" if self.is_results(job) else f"{job.state.lower()} job"
        self.say(f"scancel {what} {job.id} ({', '.join(runs) or 'no held run'})")
        self.dirty = True
        return True

    def pick_held(self) -> str | None:
        """A random held run, one before its last epoch where there is one: a run stopped after its last epoch
        completes when it starts again, and the sweep must not end before the faults."""
        held = self.held_runs()
        young = [name for name, (epoch, _, _) in held.items() if epoch < EPOCHS]
        return self.rng.choice(sorted(young or held)) if held else None

    def held_target(self) -> tuple[str, int, int, str] | None:
        """A held run to hit (`pick_held`), once there is something to hit: its name, epoch, pid and SLURM job."""
        if not self.target(running=True):
            return None
        held = self.held_runs()
        name = self.pick_held()
        return None if name is None else (name, *held[name])

    def fault_requeue(self) -> bool:
        picked = self.held_target()
        if picked is None:
            return False
        name, epoch, pid, job = picked
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if done.returncode != 0:
            self.say(f"scontrol requeue {job} refused: {done.stderr.strip()}")
            return False
        wait_for(f"the requeued {job}'s process to end", lambda: gone(pid), WAIT_S, every=0.2)
        self.forget(name)
        self.say(f"scontrol requeue {job} ({name} held after epoch {epoch})")
        return True

    def fault_sigkill(self) -> bool:
        picked = self.held_target()
        if picked is None:
            return False
        name, epoch, pid, job = picked
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(f"pid {pid} to die", lambda: gone(pid), WAIT_S, every=0.1)
        self.forget(name)
        self.say(f"SIGKILL pid {pid} training {name} (SLURM job {job}) held after epoch {epoch}")
        self.dirty = True
        return True

    def resubmittable(self) -> bool:
        """Whether a resume has something to submit: a job (a search: a trial or a worker) that did not complete and
        that nothing queues or runs."""
        queued = {job.id for job in self.working()}
        if self.kind == "search":
            return self.unfinished() and len(queued) < N_WORKERS
        return any(
            not self.completed(job.name)
            and job.launcher_job not in queued
            and self.lock_holder(self.sweep_dir / job.name) is None
            for job in self.jobs()
        )

    def fault_crash(self) -> bool:
        # a resume that has something to submit (the crash points are passed by each sbatch); else cancel a job first
        if not self.resubmittable() and self.unfinished() and self.fault_scancel():
            self.survived["scancel"] += 1
        point = self.rng.choice(CRASH_POINTS)
        n = self.rng.choice([1, 2])  # the 2nd sbatch: the results job's after the jobs', where that one is new
        due = self.resubmittable()
        proc = self.fmsweep("resume", str(self.sweep_dir), FMSWEEP_TEST_CRASH=f"{point}:{n}")
        if proc.returncode != -signal.SIGKILL:
            (self.problem if n == 1 and due else self.say)(
                f"fmsweep resume with FMSWEEP_TEST_CRASH={point}:{n} was not SIGKILLed: exit {proc.returncode} "
                f"{(proc.stdout + proc.stderr)[-800:]}"
            )
            return False
        self.say(f"fmsweep resume SIGKILLed at {point}:{n}")
        self.dirty = True
        return True

    def fault_slurm_down(self) -> bool:
        failing = ["squeue", *sorted(self.rng.sample(["sacct", "sbatch"], self.rng.randint(0, 2)))]
        before_record, before_queue, jobs = self.record(), {job.id for job in self.queue()}, self.jobs()
        for command in failing:
            (self.down / command).touch()
        try:
            shown = self.fmsweep("status", str(self.sweep_dir))
            resumed = self.fmsweep("resume", str(self.sweep_dir))
        finally:
            for command in failing:
                (self.down / command).unlink()
        self.say(
            f"{', '.join(failing)} failing: status exit {shown.returncode}, resume exit {resumed.returncode}: "
            f"{resumed.stderr.strip()[:300]}"
        )
        if shown.returncode != 0:
            self.problem(f"status while {failing} fail exited {shown.returncode}: {shown.stderr[-800:]}")
        else:
            self.check_silent_status(shown.stdout, failing, jobs)
        lines = resumed.stderr.strip().splitlines()
        if resumed.returncode != 2 or len(lines) != 1:
            self.problem(f"resume while {failing} fail: exit {resumed.returncode}, stderr {resumed.stderr[-1500:]!r}")
        after = self.record()
        for key in ("submissions", "workers", "finish_job"):
            if after.get(key) != before_record.get(key):
                self.problem(
                    f"resume while {failing} fail changed the record's {key}: "
                    f"{before_record.get(key)} -> {after.get(key)}"
                )
        new = sorted({job.id for job in self.queue()} - before_queue)
        if new:
            self.problem(f"resume while {failing} fail: new SLURM jobs {new}")
        return True

    def check_silent_status(self, out: str, failing: list[str], jobs: list[JobRecord]) -> None:
        """While squeue fails: a job whose files say neither completed nor ended and that SLURM was given is unknown,
        never a stopped or pending guess."""
        if "unknown" not in out and self.unfinished():
            self.problem(f"status while {failing} fail says nothing unknown:\n{out}")
        # the jobs (trials) recorded before the status was asked: a search's workers may ask more meanwhile
        shared = shared_overrides(jobs)
        for job in jobs:
            found = re.search(rf"^{re.escape(label(job, shared))}\s+(\w+)", out, re.MULTILINE)
            state = found.group(1) if found else None
            if state is None:
                self.problem(f"status while {failing} fail shows no line for {job.name}:\n{out}")
            elif job.launcher_job and state in ("stopped", "pending"):
                self.problem(
                    f"status while {failing} fail guesses {state} for {job.name} (SLURM job {job.launcher_job}):\n{out}"
                )

    def fault_two_resumes(self) -> bool:
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "fmsweep.cli", "resume", str(self.sweep_dir)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.env(),
            )
            for _ in range(2)
        ]
        outs = [proc.communicate(timeout=WAIT_S) for proc in procs]
        codes = [proc.returncode for proc in procs]
        self.say(f"two resumes at once: exits {codes}")
        if sorted(codes) not in ([0, 0], [0, 2]):
            self.problem(f"two resumes at once exited {codes}: {outs}")
        for code, (_, err) in zip(codes, outs):
            if code == 2 and (len(err.strip().splitlines()) != 1 or "being launched by pid" not in err):
                self.problem(
                    f"the refused one of two resumes said {err!r}, not one line naming the launch lock's holder"
                )
        if 0 in codes:
            self.dirty = False
            self.check_no_double("after two resumes at once")
        return True

    def chaos(self) -> None:
        """At least MIN_FAULTS faults, one of each kind among them, each after 0 to 1 epochs of one held run."""
        plan = list(KINDS)
        self.rng.shuffle(plan)
        plan += self.rng.choices(KINDS, weights=WEIGHTS, k=MIN_FAULTS - len(plan))
        tries = 0
        while plan and tries < 4 * MIN_FAULTS:
            tries += 1
            for _ in range(self.rng.randint(0, 1)):
                self.advance()
            kind = plan.pop(0)
            if getattr(self, f"fault_{kind.replace('-', '_')}")():
                self.survived[kind] += 1
            else:
                plan.append(kind)  # tried again later, at another state
        if plan:
            self.problem(f"faults left untried after {tries} tries: {plan}")

    # --- the end ----------------------------------------------------------------------------------------------

    def finish(self) -> tuple[str, int]:
        """Open the gate; resume and watch the sweep to its end as a user would; the last watch's output and the
        rounds it took."""
        self.gate.release()
        for rounds in range(1, RESUME_ROUNDS + 1):
            self.resume("after the faults")
            watched = self.fmsweep("status", str(self.sweep_dir), "--watch", "--interval", "1")
            self.say(f"status --watch: exit {watched.returncode}")
            if watched.returncode == 0:
                return watched.stdout, rounds
        self.problem(f"the sweep was not over after {RESUME_ROUNDS} resumes: {watched.stdout[-2000:]}")
        return watched.stdout, RESUME_ROUNDS

    def sacct(self) -> dict[str, str]:
        """Every SLURM job of the sweep in accounting: id (array tasks one by one) -> state."""
        # with the states named, accounting lists the jobs cancelled before they were eligible too
        window = ["-S", "now-2hours", "-E", "now", "-s", ALL_STATES]
        out = subprocess.run(
            ["sacct", "-u", getpass.getuser(), "-X", "-n", "-P", *window, "-o", "JobID,JobName,State"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sweep_id = self.record().get("sweep_id")
        rows = (line.split("|") for line in out.splitlines())
        return {f[0]: f[2] for f in rows if len(f) == 3 and self.mine(f[1], sweep_id)}

    def check_end(self, trainers: TwoTrainers) -> None:
        record = self.record()
        jobs = self.jobs()
        if len(jobs) != self.expected:
            self.problem(f"sweep.json records {len(jobs)} {self.kind} jobs, not {self.expected}")
        for job in jobs:
            run_dir = self.sweep_dir / job.name
            try:
                metrics = json.loads((run_dir / "metrics.json").read_text())
                history, events = history_epochs(run_dir), tensorboard_epochs(run_dir)
            except (OSError, ValueError, StopIteration) as exc:
                self.problem(f"{job.name}: cannot read its results: {exc!r}")
                continue
            if metrics.get("status") != "completed" or metrics.get("epochs_run") != EPOCHS:
                self.problem(f"{job.name}: metrics.json {metrics.get('status')}, {metrics.get('epochs_run')} epochs")
            if history != list(range(1, EPOCHS + 1)):
                self.problem(f"{job.name}: history.csv epochs {history}")
            if events != list(range(1, EPOCHS + 1)):
                self.problem(f"{job.name}: TensorBoard valid acc epochs {events}")
        if self.kind == "search":
            study = storage.find_study(self.sweep_dir)
            states = [t.state for t in study.trials] if study is not None else []
            if len(states) != N_TRIALS or any(state != TrialState.COMPLETE for state in states):
                self.problem(f"the study holds {len(states)} trials: {Counter(s.name for s in states)}")
        self.problems += [f"two trainers: {v}" for v in trainers.violations]
        # every SLURM job named after the sweep is one of its recorded submissions
        submissions = record.get("submissions")
        if submissions is None:
            self.problem("sweep.json records no submissions")
            submissions = []
        ids = {str(s["id"]) for s in submissions if s.get("id")}
        listed = set(self.started)  # accounting may lag behind squeue: wait until it lists them
        with contextlib.suppress(AssertionError):
            wait_for("accounting", lambda: set(self.sacct()) >= listed, 60, every=1)
        accounted = self.sacct()
        if not set(accounted) >= listed:
            self.problem(f"accounting does not list {sorted(listed - set(accounted))}, which squeue showed")
        strays = sorted(i for i in {*accounted, *self.seen} if i.partition("_")[0] not in ids)
        if strays:
            self.problem(f"SLURM jobs of the sweep that no submission names: {[(i, accounted.get(i)) for i in strays]}")
        # one results job at a time (check_no_double), and the last one, COMPLETED, wrote the final report: an
        # earlier one may have run once every job of the sweep had ended (cancelled, killed) before a resume
        results = [str(s["id"]) for s in submissions if s.get("kind") == "results" and s.get("id")]
        with contextlib.suppress(AssertionError):
            wait_for(
                "the results job in accounting",
                lambda: not results or self.sacct().get(results[-1], "?").split()[0] in SLURM_ENDED,
                60,
                every=1,
            )
        accounted = self.sacct()
        by_resume = self.reported_by_resume  # a resume that finds nothing alive writes the results itself
        if not by_resume and (not results or accounted.get(results[-1]) != "COMPLETED"):
            self.problem(f"results jobs {[(i, accounted.get(i)) for i in results]}: the last one did not complete")
        ends = [path.stat().st_mtime for job in jobs if (path := self.sweep_dir / job.name / "metrics.json").is_file()]
        report = self.sweep_dir / "report.md"
        if report.is_file() and ends and report.stat().st_mtime < max(ends):
            self.problem("report.md was written before the last job ended: not the final report")
        if not (self.sweep_dir / "report.md").is_file():
            self.problem("no report.md")
        # the final status agrees with the files
        shown = self.fmsweep("status", str(self.sweep_dir))
        noun = "job" if self.kind == "grid" else "trial"
        head = f"{self.expected} {noun}s (slurm): 0 pending, 0 running, {self.expected} completed, 0 failed; "
        if shown.returncode != 0 or not shown.stdout.startswith(head):
            self.problem(f"final status (exit {shown.returncode}) does not start with {head!r}:\n{shown.stdout}")
        shared = shared_overrides(jobs)
        for job in jobs:
            if not re.search(rf"^{re.escape(label(job, shared))}\s+completed: ", shown.stdout, re.MULTILINE):
                self.problem(f"final status does not show {job.name} completed:\n{shown.stdout}")


@pytest.fixture(scope="module")
def survived() -> Iterator[Counter[str]]:
    """The faults survived by kind over the module's cases: its last line."""
    total: Counter[str] = Counter()
    yield total
    print(f"\nchaos: {total.total()} faults survived in all: " + ", ".join(f"{k} {total[k]}" for k in KINDS))


def run_chaos(kind: str, seed: int, args: list[str], held: Gate, tmp_path: Path, survived: Counter[str]) -> None:
    sweep_dir = tmp_path / f"chaos-{kind}-{seed}-{time.time_ns()}"  # a name of its own: SLURM's job names carry it
    chaos = Chaos(kind, seed, sweep_dir, held, tmp_path / "scratch")
    held.hold(1)  # every run waits after each epoch until the test lets it go on
    t0 = time.monotonic()
    trainers, watched, rounds = TwoTrainers(sweep_dir), "", 0
    try:
        with trainers:
            chaos.launch([*args, "hydra.sweeper.detach=true"])
            chaos.chaos()
            watched, rounds = chaos.finish()
        chaos.check_end(trainers)
    finally:
        held.release()
        with contextlib.suppress(Exception):  # leave nothing of the sweep queued, whatever happened
            ids = sorted({job.id.partition("_")[0] for job in chaos.queue()})
            if ids:
                subprocess.run(["scancel", *ids], capture_output=True)
    wall = time.monotonic() - t0
    survived.update(chaos.survived)
    print(
        f"chaos {kind} seed {seed}: {chaos.survived.total()} faults survived ("
        + ", ".join(f"{k} {chaos.survived[k]}" for k in KINDS)
        + f") in {wall:.0f} s, {rounds} final resume(s), {trainers.samples} lock samples; "
        f"{len(chaos.problems)} problem(s)\n{watched[-600:]}"
    )
    assert chaos.survived.total() >= MIN_FAULTS, chaos.survived
    assert not chaos.problems, "\n".join(chaos.problems)


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_a_detached_grid_survives_random_faults(
    chaos_seed: int, data_root: Path, tmp_path: Path, held: Gate, survived: Counter[str]
) -> None:
    args = [*CPU_SLURM, *fast_overrides(data_root), f"epochs={EPOCHS}", *GRID]
    run_chaos("grid", chaos_seed, args, held, tmp_path, survived)


@pytest.mark.slurm
@pytest.mark.slow
@needs_cluster
def test_a_detached_search_survives_random_faults(
    chaos_seed: int, data_root: Path, tmp_path: Path, held: Gate, survived: Counter[str]
) -> None:
    args = [*CPU_SLURM, *fast_overrides(data_root), f"epochs={EPOCHS}", *SEARCH]
    run_chaos("search", chaos_seed, args, held, tmp_path, survived)

"""A search's worker: one slot of an Optuna search, run as one launcher job (a SLURM or submitit_local job, or the
launching process under the basic launcher). It asks the study for a trial (`pack` trials together), trains it in
its job dir, tells the study how it ended, and asks again, until the study holds `n_trials` ended trials: a slot is
never idle while another trial waits, and no process has to watch the search.

Taking trials, under the sweep record's lock (manifest.locked) so that two workers never take the same one:
1. its own trials that are still running in the study: the worker was requeued (preempted, or out of time) and
   resumes them from their last.pt;
2. orphans: trials running in the study whose worker is gone for good (SLURM no longer queues it, its process is
   dead) and whose run dir nobody holds: they resume from their last.pt here;
3. new trials, while the trials ended and running are fewer than `n_trials`.
A trial's record in sweep.json names the worker that trains it (`launcher_job`), so `fmsweep status` and `cancel`
see it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobStatus, configure_log, setup_globals
from omegaconf import DictConfig

from fmsweep import signals, tracking
from fmsweep.errors import UserError
from fmsweep.sweep import launch, manifest, prelaunch, space, status, storage
from fmsweep.sweep.lock import RunDirBusy


@dataclass
class Plan:
    """What every worker of a search shares: the sweep dir, the study's storage as the config writes it (never
    resolved here: this object is pickled into the cluster's job files), the trials' fixed overrides and space, the
    objective told to the study, the number of trials, and how many trials a worker trains together (pack)."""

    sweep_dir: Path
    storage: str | None
    fixed: list[str]
    space: dict[str, Any]
    objective: str
    n_trials: int
    pack: int

    def study(self) -> Any:
        return storage.load_study(self.storage, self.sweep_dir)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's overrides: the fixed ones, then its sampled values in full."""
        return [*self.fixed, *(f"{k}={space.override_value(v)}" for k, v in params.items())]


def sampler_seed(seed: int, trials: int) -> int:
    """The sampler's seed for asking the trial after `trials` trials: `seed` for the first, a seed drawn from both
    for the others. Each ask gets a sampler of its own, so that a trial's draw depends on the seed and its number
    alone: workers asking side by side never draw alike, and a continued search never replays earlier draws."""
    import numpy as np

    return seed if trials == 0 else int(np.random.SeedSequence([seed, trials]).generate_state(1)[0])


def ask(study: Any, searched: dict[str, Any]) -> int:
    """Ask the study for a new trial of the space `searched` with the sampler its launch recorded, seeded for this
    trial (`sampler_seed`); its number."""
    attrs = study.user_attrs
    trials = len(study.get_trials(deepcopy=False))
    study.sampler = space.make_sampler(attrs["sampler"], sampler_seed(attrs["seed"], trials))
    return study.ask(searched).number


def ended(trials: list[Any]) -> int:
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)


class Worker:
    """One slot of the search (see the module's doc). `launcher` is the sweep's launcher plugin (it carries Hydra's
    context, the task function and the config the trials are composed from). Submitit calls `checkpoint` when the
    job is about to be requeued: the worker starts again and takes its own running trials first."""

    def __init__(self, launcher: Any, plan: Plan) -> None:
        self.launcher, self.plan = launcher, plan
        self.singleton_state = Singleton.get_state()

    def __call__(self, worker_id: str | None = None) -> int:
        """Train trials until the search has none left for this worker; return how many it trained."""
        if worker_id is None:  # in a submitit job
            signals.listen()  # first: submitit's SIGTERM handler would swallow a cancel until a trial's StopRequest
            import submitit

            Singleton.set_state(self.singleton_state)
            setup_globals()
            worker_id = str(submitit.JobEnvironment().job_id)
        study = self.plan.study()
        # Hydra composes each combination of group choices once per worker: a trial's config then takes a few ms
        composer = prelaunch.SweepComposer(self.launcher.hydra_context.config_loader, self.launcher.config)
        trained, busy = 0, set[int]()
        while True:
            if signals.cancel_pending():  # cancelled between two trials: take no other one
                return trained
            with manifest.locked(self.plan.sweep_dir):
                record = manifest.require(self.plan.sweep_dir)
                taken = self.take(study, record, worker_id, composer, busy)
                planned = launch.units(self.launcher, record, taken)
                for num in taken:
                    job = record.job(num)
                    assert job is not None  # take() chose it among the record's jobs
                    job.launcher_job = worker_id
                record.save()
            if not taken:
                return trained
            print(
                f"fmsweep: worker {worker_id}: trial{'s' * (len(taken) > 1)} {', '.join(map(str, taken))}", flush=True
            )
            for nums, unit in planned:
                result = unit(worker_id)
                configure_log(self.launcher.config.hydra.hydra_logging, self.launcher.config.hydra.verbose)
                if isinstance(result._return_value, RunDirBusy):
                    busy.update(nums)  # another process trains them: that one tells the study
                    continue
                for num in nums:
                    job = record.job(num)
                    assert job is not None  # as above
                    self.tell(study, job, result.status == JobStatus.FAILED)
                trained += len(nums)

    def take(
        self, study: Any, record: manifest.Manifest, worker_id: str, composer: prelaunch.SweepComposer, busy: set[int]
    ) -> dict[int, DictConfig]:
        """The trials this worker trains next (see the module's doc), each with its composed config; new ones are
        asked from the study and added to the record. `busy`: trials found in another process's hands, left to it."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        candidates = [t.number for t in running if t.number not in busy]
        mine = [n for n in candidates if (job := record.job(n)) and job.launcher_job == worker_id]
        if not mine and candidates:
            # one look at what runs the others' trials (SLURM's queue, pids, run dir locks): those of no one are orphans
            alive = status.alive(replace(record, jobs=[job for job in record.jobs if job.num in candidates]))
            mine = [n for n in candidates if n not in alive][: self.plan.pack]
        if not mine:
            room = self.plan.n_trials - ended(trials) - len(running)
            mine = [ask(study, self.plan.space) for _ in range(min(self.plan.pack, max(room, 0)))]
        configs = {}
        for num in mine:
            job = record.job(num)
            overrides = job.overrides if job else self.plan.overrides(study.trials[num].params)
            try:
                configs[num] = self.compose(num, overrides, composer)
            except UserError as exc:
                print(f"fmsweep: trial {num} failed its check: {exc}", flush=True)
                study.tell(num, state=TrialState.FAIL, skip_if_finished=True)
                self.record_failed_check(record, job, num, overrides, worker_id, str(exc))
                continue
            if job is None:
                record.jobs.append(
                    manifest.JobRecord(
                        num=num,
                        name=str(configs[num].hydra.sweep.subdir),
                        overrides=overrides,
                        epochs=int(configs[num].epochs),
                    )
                )
        return configs

    def record_failed_check(
        self,
        record: manifest.Manifest,
        job: manifest.JobRecord | None,
        num: int,
        overrides: list[str],
        worker_id: str,
        error: str,
    ) -> None:
        """Record trial `num`, whose config failed its check on this worker (data missing on its node, ...), as a
        failed job with the reason, so that status shows it failed rather than pending for ever. A trial new to the
        record gets a job dir of its own, `<num>_check_failed`: without a config it has no overrides' name."""
        if job is None:
            job = manifest.JobRecord(num=num, name=f"{num}_check_failed", overrides=overrides, epochs=0)
            record.jobs.append(job)
        job.launcher_job = worker_id
        run_dir = self.plan.sweep_dir / job.name
        run_dir.mkdir(parents=True, exist_ok=True)
        tracking.record_end(run_dir, "failed", f"failed its check on worker {worker_id}: {error}")

    def compose(self, num: int, overrides: list[str], composer: prelaunch.SweepComposer) -> DictConfig:
        """Trial `num`'s config, checked as every job of a sweep is; its job dir named with readable values."""
        return prelaunch.check_jobs(
            self.launcher.hydra_context.config_loader,
            self.launcher.config,
            [overrides],
            first_num=num,
            names=[space.display_overrides(overrides)],
            composer=composer,
        )[0]

    def tell(self, study: Any, job: manifest.JobRecord, failed: bool) -> None:
        """Tell the study how the trial of `job` ended, from its metrics.json: its objective, pruned, or failed. A
        trial that was stopped (cancelled, interrupted) is not told: it stays running, to be resumed."""
        from optuna.trial import TrialState

        num, metrics = job.num, tracking.read_metrics(self.plan.sweep_dir / job.name) or {}
        result = metrics.get("status")
        if result == "completed":
            study.tell(num, metrics[self.plan.objective], skip_if_finished=True)
        elif result == "pruned":
            study.tell(num, state=TrialState.PRUNED, skip_if_finished=True)
        elif result == "failed" or (failed and result is None):
            study.tell(num, state=TrialState.FAIL, skip_if_finished=True)

    def checkpoint(self, *args: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)

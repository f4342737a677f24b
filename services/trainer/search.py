"""Hyperparameter search with optuna: each trial trains the program with sampled HPO values
and is a run of its own in the tracker.

The study lives in memory; the finished trials live on the job (details["trials"]), so a
redelivered search job rebuilds its study from them and goes on where it stopped, and a
trial interrupted half way resumes from its own checkpoint.

Trials are numbered from 1 everywhere (the job's details, run names, tags, events). A search
job tells of its trials, not of their epochs: one `progress` event per finished trial, with
that trial's metrics, then `completed` with the best trial's.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any

import optuna
from neural_dsl.ir import HPO, Choice, LogRange, Range

from . import plan
from .datasets import DatasetError
from .plan import TrainingRequest
from .runner import JobFailed, JobRunner
from .tracker_client import FAILED as RUN_FAILED
from .tracker_client import FINISHED as RUN_FINISHED
from .tracker_client import TrackerClient

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def distribution(h: HPO) -> optuna.distributions.BaseDistribution:
    """The optuna distribution of one HPO space. Choices that are not plain values (tuples)
    are sampled by their position."""
    space = h.space
    if isinstance(space, Choice):
        if any(isinstance(v, HPO) for v in space.values):
            raise DatasetError(f"{h.name}: a choice of search spaces cannot be searched")
        values = space.values if all(_plain(v) for v in space.values) else range(len(space.values))
        return optuna.distributions.CategoricalDistribution(list(values))
    if isinstance(space, LogRange):
        return optuna.distributions.FloatDistribution(space.low, space.high, log=True)
    assert isinstance(space, Range)
    ints = all(isinstance(v, int) for v in (space.start, space.end, space.step or 1))
    if ints:
        return optuna.distributions.IntDistribution(
            int(space.start), int(space.end), step=int(space.step or 1)
        )
    return optuna.distributions.FloatDistribution(
        float(space.start), float(space.end), step=space.step
    )


def _decimals(x: int | float) -> int:
    exponent = Decimal(repr(x)).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def value_of(h: HPO, sampled: Any) -> Any:
    """The HPO value a sample stands for: a position picks a non-plain choice, and a stepped
    float range gives its grid's value as written (0.3, not 0.30000000000000004)."""
    space = h.space
    if isinstance(space, Choice) and not all(_plain(v) for v in space.values):
        return space.values[int(sampled)]
    if isinstance(space, Range) and space.step and isinstance(sampled, float):
        return round(sampled, max(_decimals(space.start), _decimals(space.step)))
    return sampled


async def run_search(runner: JobRunner, req: TrainingRequest, tracker: TrackerClient) -> None:
    try:
        network = plan.network_of(req.source, req.network, runner.res.settings.limits())
        spaces = {h.name: h for h in network.hpo_params()}
        dists = {name: distribution(h) for name, h in spaces.items()}
    except (DatasetError, ValueError) as exc:
        raise JobFailed(str(exc)) from None
    study = optuna.create_study(direction=req.direction, sampler=optuna.samplers.TPESampler(seed=0))
    trials: list[dict[str, Any]] = list(runner.details.get("trials", []))
    for t in trials:  # a redelivered job: what earlier attempts found
        study.add_trial(
            optuna.trial.create_trial(
                params=t["sampled"],
                distributions=dists,
                value=t.get("value"),
                state=optuna.trial.TrialState.COMPLETE
                if t["state"] == "complete"
                else optuna.trial.TrialState.FAIL,
            )
        )
    n = req.n_trials
    for number in range(len(trials) + 1, n + 1):
        if (await runner.jobs.get(runner.job_id)).cancel_requested:
            from .training import Cancelled

            raise Cancelled()
        trial = study.ask(dists)
        values = {name: value_of(spaces[name], trial.params[name]) for name in spaces}
        run_id = await runner.ensure_run(
            tracker,
            req,
            "trial_run_id",
            f"trial-{number}-{runner.job_id[:8]}",
            {"job_kind": "search", "trial": str(number), "search_job_id": runner.job_id},
        )
        entry: dict[str, Any] = {
            "number": number,
            "run_id": run_id,
            "sampled": dict(trial.params),
            "values": values,
        }
        try:
            outcome = await runner.fit(
                tracker,
                run_id,
                req,
                values,
                runner.res.workdir(runner.job_id) / f"trial-{number}",
                ((number - 1) / n, number / n),
                onnx=False,
                epoch_events=False,
            )
        except JobFailed as exc:  # these values make a bad network: the search goes on
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            with contextlib.suppress(Exception):
                await tracker.set_status(run_id, RUN_FAILED)
            entry |= {"state": "failed", "error": str(exc)}
            metrics: dict[str, float] = {}
        else:
            metrics = outcome.history[-1].metrics if outcome.history else {}
            if req.objective not in metrics:
                known = ", ".join(sorted(metrics)) or "none"
                raise JobFailed(f"training logs no metric {req.objective!r} (it logs: {known})")
            study.tell(trial, metrics[req.objective])
            await tracker.set_status(run_id, RUN_FINISHED)
            entry |= {"state": "complete", "value": metrics[req.objective], "metrics": metrics}
        trials.append(entry)
        runner.details.pop("trial_run_id", None)
        runner.details["trials"] = trials
        _best(runner.details, trials, req.direction)
        runner.details.update(epoch=0, step=0, metrics=metrics, trial=number)
        await runner.save_details(
            "progress", f"trial {number}/{n} {entry['state']}", progress=number / n
        )
    if not runner.details.get("best_run_id"):
        last = trials[-1].get("error", "") if trials else ""
        raise JobFailed(f"every trial failed; the last: {last}")
    best = runner.details["best_run_id"]
    runner.details.update(
        metrics=runner.details["best_metrics"], trial=runner.details["best_trial"]
    )
    await runner.life.succeed(
        f"runs/{best}",
        f"best: trial {runner.details['best_trial']}, runs/{best}",
        progress=1.0,
        details=runner.details,
    )


def _best(details: dict[str, Any], trials: list[dict[str, Any]], direction: str) -> None:
    done = [t for t in trials if t["state"] == "complete"]
    if not done:
        return
    pick = min if direction == "minimize" else max
    best = pick(done, key=lambda t: t["value"])
    details.update(
        best_run_id=best["run_id"],
        best_trial=best["number"],
        best_value=best["value"],
        best_metrics=best["metrics"],
        best_values={k: v if _plain(v) else list(v) for k, v in best["values"].items()},
    )

"""The sweep's Optuna samplers (``--sampler``), each seeded by ``--seed``.

- ``tpe`` (the default): multivariate TPE; with trials running at once, the constant liar gives the running trials a
  pessimistic value, so the next suggestion is not drawn blind of them (ray-project/ray#52535, optuna/optuna#2923).
- ``gp``: Gaussian-process Bayesian optimisation (torch), random for its first 10 complete trials.
- ``cmaes``: CMA-ES over the float and integer parameters; it cannot sample categorical ones, which are drawn at
  random, independently (one log line says which, instead of Optuna's warning per parameter and trial).
- ``qmc``: a scrambled Sobol sequence (quasi-random, evenly spread); its first trial is drawn at random.
- ``random``: uniform random sampling.

With one trial at a time, the same seed suggests the same configurations (given the same results); trials run at
once finish in an order no seed fixes.
"""

from __future__ import annotations

import logging
import warnings

import optuna
import optuna.distributions as od

from genre_sweep.tune.configs import SAMPLERS

log = logging.getLogger(__name__)


def make_sampler(
    name: str, seed: int, concurrent: bool, space: dict[str, od.BaseDistribution]
) -> optuna.samplers.BaseSampler:
    """Optuna's sampler ``name`` seeded with ``seed``, for ``space``; ``concurrent``: trials run at once."""
    with warnings.catch_warnings():  # QMCSampler is "experimental" since Optuna 3.0: nothing for a user to do
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = _new(name, seed, concurrent)
    log.info("sampler: %s", describe(name, seed, concurrent, space))
    return sampler


def _new(name: str, seed: int, concurrent: bool) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=concurrent)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":  # categorical parameters: its own RandomSampler(seed), said once by describe()
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; one of {', '.join(SAMPLERS)}")


def describe(name: str, seed: int, concurrent: bool, space: dict[str, od.BaseDistribution]) -> str:
    """One line saying how ``name`` samples ``space``: the log line a sweep starts with."""
    if name == "tpe":
        liar = ", with the constant liar for running trials" if concurrent else ""
        return f"tpe (multivariate TPE{liar}; random for the first 10 trials), seed {seed}"
    if name == "gp":
        return f"gp (Gaussian process; random until 10 trials are complete), seed {seed}"
    if name == "cmaes":
        categorical = sorted(n for n, d in space.items() if isinstance(d, od.CategoricalDistribution))
        joint = sorted(n for n in space if n not in categorical)
        apart = f"; {', '.join(categorical)} (categorical) at random, independently" if categorical else ""
        return f"cmaes (CMA-ES over {', '.join(joint) or 'no parameter'}{apart}), seed {seed}"
    if name == "qmc":
        return f"qmc (scrambled Sobol sequence; its first trial at random), seed {seed}"
    return f"random (uniform, independent), seed {seed}"

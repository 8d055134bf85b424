"""genre-sweep: the installed namespace, and its core, the plumbing every job shares.

The core (this folder, ``core/``, installed as ``genre_sweep``) holds config resolution, the job runner
and its error base, object storage, seeds, Ray start-up and the command-line table. The jobs live in
the subpackages ``genre_sweep.data``, ``genre_sweep.model`` and ``genre_sweep.tune``, which depend on
it and never the other way round: tune -> model -> data -> core.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("genre-sweep")
except PackageNotFoundError:  # imported from a tree that was never installed
    __version__ = "0+unknown"

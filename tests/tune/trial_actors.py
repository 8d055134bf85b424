"""Runs two trials, one after the other in one reused trial actor, on a local Ray with a dashboard; run by
tests/tune/test_trial.py (Ray's state API needs the dashboard, which the test session's Ray has not).

Prints one line, `OUTCOME <json>`: each trial's id and name, and the actors Ray's state API lists; fails if Tune
refuses to restore the experiment with the trainable or with the function it wraps.
"""

import json
import socket
import sys
import time

import ray
from ray import tune
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from genre_sweep.tune import internals
from genre_sweep.tune.trial import trial_actor

storage = sys.argv[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def says_hello(config: dict, word: str) -> None:
    context = tune.get_context()
    print(f"{word} from {context.get_trial_id()}", flush=True)
    tune.report({"x": config["x"], "name": context.get_trial_name()})


cluster = Cluster(
    initialize_head=True,
    head_node_args={
        "num_cpus": 1,
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(),
        # the agent's default port (52365) may be held by another Ray on this machine, e.g. the test session's
        "dashboard_agent_listen_port": free_port(),
    },
)
ray.init(address=cluster.address, log_to_driver=True)
internals.drop_tensorboard_hint()
trainable = trial_actor(says_hello, {"cpu": 1}, word="hello")
results = tune.Tuner(
    trainable,
    param_space={"x": tune.grid_search([1, 2])},
    tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=1),
    run_config=tune.RunConfig(storage_path=storage, name="named", verbose=0),
).fit()
for restorable in (trainable, says_hello):  # --resume restores with the class, retrain with the function
    tune.Tuner.restore(f"{storage}/named", trainable=restorable)  # Tune checks the trainable's name
time.sleep(2)  # the trials' forwarded log lines are printed by a thread of their own
trials = sorted((r.metrics["trial_id"], r.metrics["name"]) for r in results)
actors = [{"class_name": a.class_name, "repr_name": a.repr_name} for a in list_actors(detail=True)]
print("OUTCOME " + json.dumps({"trials": trials, "actors": actors}), flush=True)
ray.shutdown()
cluster.shutdown()

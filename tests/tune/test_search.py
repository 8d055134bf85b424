"""The persistent ASHA's state file against a real S3-protocol server that goes away for a while."""

import json
import logging
import threading

from genre_sweep.store import StoreOptions, read_bytes
from genre_sweep.tune.search import PersistentASHA


def test_the_asha_state_is_written_once_the_store_is_back_and_the_sweep_goes_on(restartable_s3, caplog):
    restartable_s3.client().create_bucket(Bucket="asha")
    uri, options = "s3://asha/sweep-asha-state.json", StoreOptions(restartable_s3.endpoint)
    asha = PersistentASHA(state_uri=uri, options=options, max_t=9, grace_period=1, reduction_factor=3)
    # the store is unreachable until the save has failed once (not a fixed time: the S3 client's own set-up and
    # retries can outlast a short outage, and then there was nothing to ride out)
    failed = threading.Event()
    outage = threading.Thread(target=restartable_s3.outage, args=(30.0, failed))
    outage.start()
    assert restartable_s3.down.wait(30)  # the server has stopped (stopping it can take longer than a fixed sleep)
    seen = SetOn("retrying", failed)
    logging.getLogger("genre_sweep").addHandler(seen)
    try:
        with caplog.at_level(logging.WARNING, logger="genre_sweep"):
            asha._save()  # what every scheduler decision does; it must not raise
        state = json.loads(read_bytes(uri, options))
        assert len(state["rungs"]) >= 1 and state["trial_bracket"] == {}
        assert any("attempt 1, retrying in 1 s" in r.getMessage() for r in caplog.records)
    finally:
        logging.getLogger("genre_sweep").removeHandler(seen)
        failed.set()
        outage.join()


class SetOn(logging.Handler):
    """Sets ``event`` when a record's message contains ``text``."""

    def __init__(self, text: str, event: threading.Event):
        super().__init__()
        self.text, self.event = text, event

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_a_trial_a_killed_driver_already_told_the_study_is_not_told_again(tmp_path, caplog):
    """The driver told the study a trial had finished, then died before Tune's next snapshot of the searcher:
    the resumed searcher (restored from that older snapshot) sees the trial finish again."""
    import optuna
    from optuna.trial import TrialState

    from genre_sweep.tune import internals
    from genre_sweep.tune.search import PruneAwareOptunaSearch

    def searcher() -> PruneAwareOptunaSearch:
        return PruneAwareOptunaSearch(
            space={"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
            metric="val_clip_acc",
            mode="max",
            storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"),
            study_name="s",
            default_epochs=2,
            trials_root=str(tmp_path / "s"),
        )

    first = searcher()
    first.suggest("t1")
    first.on_trial_result("t1", {"val_clip_acc": 0.5, "training_iteration": 1})
    first.save(str(tmp_path / "snapshot.pkl"))  # Tune's experiment snapshot, taken after epoch 1
    first.on_trial_result("t1", {"val_clip_acc": 0.7, "training_iteration": 2})
    first.on_trial_complete("t1", {"val_clip_acc": 0.7, "training_iteration": 2})  # told: COMPLETE, 0.7
    # ... the driver is killed here; the resumed sweep restores the snapshot and reruns epoch 2 from its checkpoint
    resumed = searcher()
    resumed.restore(str(tmp_path / "snapshot.pkl"))
    with caplog.at_level(logging.INFO, logger="genre_sweep.tune.search"):
        resumed.on_trial_result("t1", {"val_clip_acc": 0.7, "training_iteration": 2})
        resumed.on_trial_complete("t1", {"val_clip_acc": 0.7, "training_iteration": 2})
    study = internals.optuna_study(resumed)
    assert [(t.state, t.value, t.intermediate_values) for t in study.get_trials()] == [
        (TrialState.COMPLETE, 0.7, {1: 0.5, 2: 0.7})
    ]
    assert "already finished in the study" in caplog.text


def test_a_truncated_asha_state_resumes_with_empty_rungs_and_a_warning(tmp_path, caplog):
    state = tmp_path / "sweep-asha-state.json"
    state.write_text('{"rungs": [[[1.0, {"t1": 0.5')  # cut off mid-write
    asha = PersistentASHA(state_uri=str(state), options=StoreOptions(), max_t=9, grace_period=1, reduction_factor=3)
    with caplog.at_level(logging.WARNING, logger="genre_sweep.tune.search"):
        assert asha.restore_state() is False
    assert "is unreadable" in caplog.text and "empty rungs" in caplog.text
    asha._save()
    assert json.loads(state.read_text())["trial_bracket"] == {}  # whole again after the next decision

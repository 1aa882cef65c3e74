import pytest

from lightning_nas.callbacks import LightningNASCallback
from lightning_nas.models import Classifier, DigitsCNN
from tests.helpers import fast_trainer


class _Counter(LightningNASCallback):
    _state_attrs = ("count", "history")

    def __init__(self):
        self.count, self.history, self.validated = 0, [], False

    def _validate_model(self, trainer, pl_module):
        self.validated = True

    def on_train_epoch_end(self, trainer, pl_module):
        self.count += 1
        self.history.append(trainer.current_epoch)
        self.tracker(trainer).log_scalars({"counter/count": self.count})


def test_state_roundtrip_and_validation_hook(tmp_path, digits):
    cb = _Counter()
    fast_trainer(tmp_path, callbacks=[cb], max_epochs=2, limit_train_batches=2, limit_val_batches=1).fit(
        Classifier(DigitsCNN(4)), datamodule=digits
    )
    assert cb.validated and cb.count == 2
    state = cb.state_dict()
    state["history"].append(99)  # a deep copy: the callback is untouched
    assert cb.history == [0, 1]
    fresh = _Counter()
    fresh.load_state_dict(cb.state_dict())
    assert (fresh.count, fresh.history) == (2, [0, 1])
    with pytest.raises(KeyError, match="lacks"):
        fresh.load_state_dict({"count": 1})
    assert (tmp_path / "nas_files" / "scalars.jsonl").exists()


class _Every(LightningNASCallback):
    _state_attrs = ("seen",)

    def __init__(self, every: int = 1, tags: tuple = ()):
        self.every, self.tags, self.seen = every, tags, []

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch % self.every == 0:
            self.seen.append(trainer.current_epoch)


def test_two_instances_keep_separate_states_and_old_keys_still_load(tmp_path, digits):
    import torch

    from lightning_nas.callbacks import AttributionMonitor

    # keys name the arguments that differ from the defaults, as Lightning's own callbacks do
    assert AttributionMonitor().state_key == "AttributionMonitor{}"
    assert AttributionMonitor(every_n_epochs=2).state_key == "AttributionMonitor{'every_n_epochs': 2}"
    a, b = _Every(1), _Every(2)
    assert a.state_key != b.state_key
    trainer = fast_trainer(tmp_path, callbacks=[a, b], max_epochs=3, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(Classifier(DigitsCNN(4)), datamodule=digits)  # one stateful key each: no "more than one" error
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    states = torch.load(ckpt, weights_only=True)["callbacks"]
    assert states[a.state_key] == {"seen": [0, 1, 2]} and states[b.state_key] == {"seen": [0, 2]}
    a2, b2 = _Every(1), _Every(2)
    fast_trainer(tmp_path / "r", callbacks=[a2, b2], max_epochs=4, limit_train_batches=1, limit_val_batches=0).fit(
        Classifier(DigitsCNN(4)), datamodule=digits, ckpt_path=str(ckpt)
    )
    assert a2.seen == [0, 1, 2, 3] and b2.seen == [0, 2]
    # a checkpoint from before the keys held arguments stored the state under the bare class name
    old = _Every()
    old.load_state_dict(states[a.state_key])
    legacy = {"callbacks": {"_Every{}": {"seen": [5]}}}
    assert _Every(3, tags=("x",))._checkpoint_state(legacy) == {"seen": [5]}

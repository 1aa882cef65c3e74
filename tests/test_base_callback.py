import pytest

from lightning_nas.callbacks import LightningNASCallback
from lightning_nas.models import Classifier, DigitsCNN
from tests.conftest import fast_trainer


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

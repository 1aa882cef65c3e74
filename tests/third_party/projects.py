"""The projects of the matrix: how to build, feed and observe each one (test-side knowledge only)."""

from __future__ import annotations

import copy

from torch import nn
from torch.utils.data import DataLoader

from lightning_nas.data import DigitsDataModule
from tests.third_party._harness import Project
from tests.third_party.models import backbone_head, demo_net, dict_batches, manual_opt, mlp, resnet, transformer_lm
from tests.third_party.models.digits_data import DigitsDictDataModule


def _digits(batch_size: int = 64) -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=batch_size, seed=0)
    dm.setup()
    return dm


def _digits_fit() -> dict:
    return {"datamodule": _digits()}


def _digits_val() -> DataLoader:
    return _digits().val_dataloader()


def _digits_ref() -> DataLoader:
    return DataLoader(_digits().split("train"), batch_size=256)


def _dict_dm() -> DigitsDictDataModule:
    dm = DigitsDictDataModule()
    dm.setup()
    return dm


def _xy_labels(batch):
    return batch[1]


def _xy_input(batch):
    return batch[0]


def _eval(m: nn.Module) -> nn.Module:
    return m.eval().requires_grad_(False)


def _mlp_teacher(trained) -> nn.Module:
    t = mlp.FlatMLP()
    t.load_state_dict(trained.state_dict())
    return _eval(t)


PROJECTS: dict[str, Project] = {
    p.key: p
    for p in [
        Project(
            key="demo_net",
            build=lambda s: demo_net.DigitsOnMNISTNet(demo_net.searchable_net() if s else None),
            fit_data=_digits_fit,
            val_loader=_digits_val,
            ref_loader=_digits_ref,
            input_module="net",
            logits_module="net",
            labels=_xy_labels,
            raw_input=_xy_input,
            predict=lambda m, x: m.net(demo_net.to_mnist(x)),
            teacher=lambda m: _eval(copy.deepcopy(m.net)),
            limit_train_batches=10,
        ),
        Project(
            key="resnet18",
            build=lambda s: resnet.ResNetClassifier(searchable=s),
            fit_data=_digits_fit,
            val_loader=_digits_val,
            ref_loader=_digits_ref,
            input_module="model",
            logits_module="model",
            labels=_xy_labels,
            raw_input=_xy_input,
            predict=lambda m, x: m.model(m.preprocess(x)),
            teacher=lambda m: _eval(copy.deepcopy(m.model)),
        ),
        Project(
            key="dict_batches",
            build=lambda s: dict_batches.DictBatchClassifier(searchable=s),
            fit_data=lambda: {"datamodule": _dict_dm()},
            val_loader=lambda: _dict_dm().val_dataloader(),
            ref_loader=lambda: DataLoader(_dict_dm().train_set, batch_size=256),
            input_module="model",
            logits_module="model",
            labels=lambda b: b["label"],
            raw_input=lambda b: b["image"],
            predict=lambda m, x: m.model(x),
            teacher=lambda m: _eval(copy.deepcopy(m.model)),
        ),
        Project(
            key="backbone_head",
            build=lambda s: backbone_head.BackboneHead(searchable=s),
            fit_data=_digits_fit,
            val_loader=_digits_val,
            ref_loader=_digits_ref,
            input_module="backbone",
            logits_module="head",
            labels=_xy_labels,
            raw_input=_xy_input,
            predict=lambda m, x: m.head(m.backbone(x).flatten(1)),
            teacher=lambda m: _eval(nn.Sequential(copy.deepcopy(m.backbone), nn.Flatten(), copy.deepcopy(m.head))),
        ),
        Project(
            key="backbone_pool_head",
            build=lambda s: backbone_head.BackbonePoolHead(searchable=s),
            fit_data=_digits_fit,
            val_loader=_digits_val,
            ref_loader=_digits_ref,
            input_module="backbone",
            logits_module="head",
            labels=_xy_labels,
            raw_input=_xy_input,
            predict=lambda m, x: m._logits(x),
            teacher=lambda m: _eval(
                nn.Sequential(copy.deepcopy(m.backbone), nn.AdaptiveAvgPool2d(2), nn.Flatten(), copy.deepcopy(m.head))
            ),
        ),
        Project(
            key="manual_opt",
            build=lambda s: manual_opt.ManualOptClassifier(searchable=s),
            fit_data=_digits_fit,
            val_loader=_digits_val,
            ref_loader=_digits_ref,
            input_module="net",
            logits_module="net",
            labels=_xy_labels,
            raw_input=_xy_input,
            predict=lambda m, x: m.net(x),
            teacher=lambda m: _eval(copy.deepcopy(m.net)),
            manual_optimization=True,
        ),
        Project(
            key="flat_mlp",
            build=lambda s: mlp.FlatMLP(searchable=s),
            fit_data=_digits_fit,
            val_loader=_digits_val,
            ref_loader=_digits_ref,
            input_module="",
            logits_module="",
            labels=_xy_labels,
            raw_input=_xy_input,
            predict=lambda m, x: m(x.view(x.size(0), -1)),
            teacher=_mlp_teacher,
        ),
        Project(
            key="demo_transformer",
            build=lambda s: transformer_lm.searchable_lm() if s else transformer_lm.SyntheticTokensLM(),
            fit_data=lambda: {},
            val_loader=lambda: DataLoader(transformer_lm.synthetic_tokens(96, seed=1), batch_size=32),
            ref_loader=lambda: DataLoader(transformer_lm.synthetic_tokens(512, seed=0), batch_size=128),
            input_module="model",
            logits_module="model",
            labels=lambda b: b[1].reshape(-1),
            raw_input=_xy_input,
            predict=lambda m, x: m(x, x),
            teacher=lambda m: _eval(copy.deepcopy(m.model)),
            limit_train_batches=8,
            max_epochs=2,
            has_validation=False,
        ),
    ]
}

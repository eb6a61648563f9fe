import pytest
import torch
from torch import nn

from fmsweep import models


@pytest.mark.parametrize(
    "model",
    [models.Linear(), models.FullyConnected(), models.VanillaCNN(dropout=0.5), models.FancyCNN()],
    ids=["linear", "fc", "vanilla_cnn", "fancy_cnn"],
)
def test_models_map_a_batch_to_ten_logits(model: nn.Module) -> None:
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_parameter_counts_match_the_architectures() -> None:
    assert models.num_parameters(models.Linear()) == 784 * 10 + 10
    assert models.num_parameters(models.FullyConnected()) == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert 0.9e6 < models.num_parameters(models.FancyCNN()) < 1.2e6


def test_fc_dropout_layers_follow_the_config() -> None:
    rates = [m.p for m in models.FullyConnected(input_dropout=0.2, dropout=0.5).modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.2, 0.5, 0.5]
    assert not any(isinstance(m, nn.Dropout) for m in models.FullyConnected().modules())


def test_l2_penalty_counts_weights_only() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    for p in model.parameters():
        nn.init.constant_(p, 2.0)
    n_weights = model[0].weight.numel() + model[3].weight.numel()
    assert models.l2_penalty(model).item() == pytest.approx(4.0 * n_weights)
    model[0].bias.data.fill_(100.0)
    model[1].weight.data.fill_(100.0)
    assert models.l2_penalty(model).item() == pytest.approx(4.0 * n_weights)


def test_classifier_normalizes_raw_images_of_any_accepted_shape() -> None:
    mean, std = torch.full((28, 28), 0.5), torch.full((28, 28), 0.25)
    clf = models.Classifier(nn.Flatten(), mean, std)
    raw = torch.full((28, 28), 255, dtype=torch.uint8)
    expected = torch.full((1, 784), 2.0)
    assert torch.allclose(clf(raw), expected)
    assert torch.allclose(clf(raw[None].float() / 255), expected)
    assert clf(raw.expand(4, 1, 28, 28)).shape == (4, 784)

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
    assert [m.p for m in models.dropout_layers(models.FullyConnected(input_dropout=0.2, dropout=0.5))] == [
        0.2,
        0.5,
        0.5,
    ]
    assert not models.dropout_layers(models.FullyConnected())


def test_dropout_draws_a_stream_of_its_own_per_run_and_layer() -> None:
    """As nn.Dropout: about p of the units zeroed, the rest scaled by 1/(1-p), identity in eval mode. Its masks are
    a function of (run seed, layer, batches drawn): a new mask every batch, another for another seed or layer, the
    same again after `seek_dropout`, and the same under vmap (a stacked pack) as alone."""

    def net(seed: int) -> nn.Sequential:
        model = nn.Sequential(models.Dropout(0.3), models.Dropout(0.3))
        models.seed_dropout(model, seed)
        return model

    x = torch.ones(64, 500)
    a = net(7)
    first, second = a[0](x), a[0](x)
    assert first.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]
    assert (first == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert first.mean().item() == pytest.approx(1.0, abs=0.02)
    assert not torch.equal(first, second)  # each batch its own mask
    assert not torch.equal(net(7)[1](x), net(7)[0](x)) and not torch.equal(net(8)[0](x), net(7)[0](x))
    assert ((first == 0) & (net(8)[0](x) == 0)).float().mean().item() == pytest.approx(0.09, abs=0.01)  # independent
    models.seek_dropout(a, 1)
    assert torch.equal(a[0](x), second)  # a resumed run continues its stream
    a.eval()
    assert torch.equal(a(x), x)

    nets = [net(seed) for seed in (3, 4, 5)]
    alone = torch.stack([n(x) for n in nets])
    for n in nets:
        models.seek_dropout(n, 0)
    stacked = torch.func.stack_module_state(nets)[1]
    template = net(0)
    under_vmap = torch.func.vmap(
        lambda buffers, xk: torch.func.functional_call(template, buffers, (xk,)), randomness="error"
    )(stacked, x.expand(3, *x.shape))
    assert torch.equal(under_vmap, alone)
    assert stacked["0.draws"].tolist() == [1, 1, 1]  # each member's count advanced in its stacked copy


def test_l2_penalty_counts_weights_only() -> None:
    conv, norm, linear = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2, 3)
    model = nn.Sequential(conv, norm, nn.Flatten(), linear)
    for p in model.parameters():
        nn.init.constant_(p, 2.0)
    n_weights = conv.weight.numel() + linear.weight.numel()
    assert models.l2_penalty(model).item() == pytest.approx(4.0 * n_weights)
    assert conv.bias is not None and norm.weight is not None
    conv.bias.data.fill_(100.0)
    norm.weight.data.fill_(100.0)
    assert models.l2_penalty(model).item() == pytest.approx(4.0 * n_weights)


def test_classifier_normalizes_raw_images_of_any_accepted_shape() -> None:
    mean, std = torch.full((28, 28), 0.5), torch.full((28, 28), 0.25)
    clf = models.Classifier(nn.Flatten(), mean, std)
    raw = torch.full((28, 28), 255, dtype=torch.uint8)
    expected = torch.full((1, 784), 2.0)
    assert torch.allclose(clf(raw), expected)
    assert torch.allclose(clf(raw[None].float() / 255), expected)
    assert clf(raw.expand(4, 1, 28, 28)).shape == (4, 784)

"""Shapes and parameter counts of the reference models."""
from __future__ import annotations

import pytest
import torch

from reference.models import CNN1d, MLP, MODELS, RNN, build_model, count_parameters

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is as fast and immune to a busy CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


AF = dict(window=30, channels=1, n_classes=2)
GAIT = dict(window=20, channels=12, n_classes=4)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [AF, GAIT], ids=["af", "gait"])
def test_output_shape(name, shape):
    torch.manual_seed(0)
    model = build_model(name, **shape)
    x = torch.randn(7, shape["window"], shape["channels"])
    model.train()
    assert model(x).shape == (7, shape["n_classes"])
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (7, shape["n_classes"])
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_registry_names():
    assert set(MODELS) == {"mlp", "cnn", "lstm", "gru", "bilstm", "bigru"}
    assert isinstance(build_model("MLP", **AF), MLP)
    assert isinstance(build_model("cnn", **AF), CNN1d)
    for name, cell, bi in [("lstm", "lstm", False), ("gru", "gru", False),
                           ("bilstm", "lstm", True), ("bigru", "gru", True)]:
        m = build_model(name, **AF)
        assert isinstance(m, RNN) and m.cell == cell and m.bidirectional is bi
    with pytest.raises(ValueError, match="unknown model"):
        build_model("transformer", **AF)


def test_mlp_parameter_count():
    model = MLP(30, 1, 2, hidden=(64, 32))
    assert count_parameters(model) == (30 * 64 + 64) + (64 * 32 + 32) + (32 * 2 + 2)
    gait = MLP(20, 12, 4, hidden=(16,))
    assert count_parameters(gait) == (240 * 16 + 16) + (16 * 4 + 4)


def lstm_params(inp, h):
    return 4 * (h * (inp + h) + 2 * h)


def gru_params(inp, h):
    return 3 * (h * (inp + h) + 2 * h)


def test_lstm_parameter_count():
    model = RNN(20, 12, 4, cell="lstm", hidden=32)
    assert count_parameters(model) == lstm_params(12, 32) + (32 * 4 + 4)


def test_bidirectional_doubles_recurrent_params():
    for cell, per_dir in [("lstm", lstm_params), ("gru", gru_params)]:
        uni = RNN(30, 1, 2, cell=cell, hidden=16)
        bi = RNN(30, 1, 2, cell=cell, hidden=16, bidirectional=True)
        rec_uni = count_parameters(uni.rnn)
        rec_bi = count_parameters(bi.rnn)
        assert rec_uni == per_dir(1, 16)
        assert rec_bi == 2 * rec_uni
        assert count_parameters(bi.fc) == 2 * 16 * 2 + 2


def test_two_layer_lstm_parameter_count():
    model = RNN(30, 1, 2, cell="lstm", hidden=8, layers=2, bidirectional=True, dropout=0.1)
    expected = 2 * lstm_params(1, 8) + 2 * lstm_params(16, 8) + (16 * 2 + 2)
    assert count_parameters(model) == expected


def test_unidirectional_rnn_uses_last_time_step():
    torch.manual_seed(0)
    model = RNN(10, 3, 2, cell="gru", hidden=5).eval()
    x = torch.randn(4, 10, 3)
    with torch.no_grad():
        out, _ = model.rnn(x)
        assert torch.allclose(model(x), model.fc(out[:, -1]), atol=1e-6)


def test_bidirectional_rnn_uses_last_forward_and_first_backward():
    torch.manual_seed(0)
    model = RNN(10, 3, 2, cell="lstm", hidden=5, bidirectional=True).eval()
    x = torch.randn(4, 10, 3)
    with torch.no_grad():
        out, _ = model.rnn(x)                      # (B, T, 2H)
        z = torch.cat([out[:, -1, :5], out[:, 0, 5:]], dim=1)
        assert torch.allclose(model(x), model.fc(z), atol=1e-6)


def test_cnn_heads_and_short_windows():
    gap = CNN1d(30, 1, 2, filters=(8, 16))
    flat = CNN1d(30, 1, 2, filters=(8, 16), head="flatten")
    assert gap.fc.in_features == 16
    assert flat.out_length == 8                     # 30 -> 15 -> 8 (ceil mode)
    assert flat.fc.in_features == 16 * 8
    x = torch.randn(3, 30, 1)
    assert flat(x).shape == (3, 2)
    # more pooling than the window is long: ceil mode keeps length >= 1
    tiny = CNN1d(3, 2, 3, filters=(4, 4, 4, 4))
    assert tiny(torch.randn(2, 3, 2)).shape == (2, 3)


def test_count_parameters_trainable_only():
    model = MLP(30, 1, 2)
    total = count_parameters(model)
    for p in model.net[1].parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == total - (30 * 64 + 64)


def test_wrong_channels_raise():
    with pytest.raises(ValueError, match="channels"):
        build_model("lstm", **AF)(torch.randn(2, 30, 3))

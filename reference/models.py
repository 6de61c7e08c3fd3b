"""Reference models of the lab: an MLP, a 1-D CNN and recurrent networks.

Every model takes a float tensor of shape ``(batch, window, channels)`` -- the
layout of :class:`reference.data.Split` ``.X`` -- and returns logits of shape
``(batch, n_classes)`` (no softmax; train with ``nn.CrossEntropyLoss``).

Example
-------
>>> import torch
>>> from reference.models import build_model, count_parameters
>>> model = build_model("lstm", window=30, channels=1, n_classes=2, hidden=32)
>>> model(torch.randn(8, 30, 1)).shape
torch.Size([8, 2])
>>> count_parameters(model)   # 4*(32*(1+32) + 2*32) + (32*2 + 2)
4546
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["MLP", "CNN1d", "RNN", "MODELS", "build_model", "from_config", "count_parameters"]


def _check_input(x: torch.Tensor, window: int, channels: int) -> None:
    if x.dim() != 3 or x.shape[2] != channels:
        raise ValueError(
            f"expected input of shape (batch, window, channels={channels}), got {tuple(x.shape)}"
        )


class MLP(nn.Module):
    """Multi-layer perceptron on the flattened window.

    ``(B, window, channels)`` -> flatten -> ``(B, window*channels)`` ->
    [Linear -> ReLU -> Dropout] per entry of ``hidden`` -> Linear ->
    ``(B, n_classes)`` logits.

    >>> MLP(30, 1, 2)(torch.randn(4, 30, 1)).shape
    torch.Size([4, 2])
    """

    def __init__(self, window: int, channels: int, n_classes: int,
                 hidden: Sequence[int] = (64, 32), dropout: float = 0.2) -> None:
        super().__init__()
        self.window, self.channels, self.n_classes = window, channels, n_classes
        layers: list[nn.Module] = [nn.Flatten()]
        width = window * channels
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, window, channels)`` -> logits ``(B, n_classes)``."""
        _check_input(x, self.window, self.channels)
        if x.shape[1] != self.window:
            raise ValueError(f"MLP built for window={self.window}, got {x.shape[1]}")
        return self.net(x)


class CNN1d(nn.Module):
    """1-D convolutional network over time.

    ``(B, window, channels)`` -> transpose -> ``(B, channels, window)`` ->
    per entry ``f`` of ``filters``: Conv1d(k=``kernel_size``, "same" padding,
    ``f`` filters) -> BatchNorm1d -> ReLU -> MaxPool1d(``pool``, ceil mode, so
    the length never drops to 0) -> then ``head="gap"``: global average pooling
    over time -> ``(B, filters[-1])``, or ``head="flatten"``:
    ``(B, filters[-1] * T_out)`` -> Dropout -> Linear -> ``(B, n_classes)``.

    >>> CNN1d(20, 12, 4)(torch.randn(4, 20, 12)).shape
    torch.Size([4, 4])
    """

    def __init__(self, window: int, channels: int, n_classes: int,
                 filters: Sequence[int] = (16, 32), kernel_size: int = 5, pool: int = 2,
                 dropout: float = 0.2, head: str = "gap") -> None:
        super().__init__()
        if head not in ("gap", "flatten"):
            raise ValueError(f"head must be 'gap' or 'flatten', got {head!r}")
        self.window, self.channels, self.n_classes, self.head = window, channels, n_classes, head
        blocks: list[nn.Module] = []
        width, length = channels, window
        for f in filters:
            blocks += [nn.Conv1d(width, f, kernel_size, padding="same"),
                       nn.BatchNorm1d(f), nn.ReLU()]
            if pool and pool > 1:
                blocks.append(nn.MaxPool1d(pool, ceil_mode=True))
                length = -(-length // pool)
            width = f
        self.features = nn.Sequential(*blocks)
        self.out_length = length
        in_fc = width if head == "gap" else width * length
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(in_fc, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, window, channels)`` -> logits ``(B, n_classes)``."""
        _check_input(x, self.window, self.channels)
        z = self.features(x.transpose(1, 2))          # (B, filters[-1], T_out)
        z = z.mean(dim=2) if self.head == "gap" else z.flatten(1)
        return self.fc(self.dropout(z))


class RNN(nn.Module):
    """LSTM or GRU classifier (``batch_first=True``).

    ``(B, window, channels)`` -> ``nn.LSTM``/``nn.GRU`` (``layers`` layers,
    ``hidden`` units, ``dropout`` between layers) -> the final hidden state of
    the last layer, ``h_n``: for one direction this is the output at the last
    time step, ``(B, hidden)``; bidirectional: the forward state after the last
    step concatenated with the backward state after the first step,
    ``(B, 2*hidden)`` -> Dropout(``dropout``) -> Linear -> ``(B, n_classes)``.

    Trainable parameters: per layer and direction ``g*(hidden*(in + hidden) +
    2*hidden)`` with ``g = 4`` (LSTM) or ``3`` (GRU) and ``in`` = ``channels``
    for the first layer, ``hidden * directions`` above; plus the head
    ``(hidden*directions + 1) * n_classes``.

    >>> RNN(20, 12, 4, cell="gru", bidirectional=True)(torch.randn(4, 20, 12)).shape
    torch.Size([4, 4])
    """

    def __init__(self, window: int, channels: int, n_classes: int, cell: str = "lstm",
                 hidden: int = 32, layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        cell = cell.lower()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        self.window, self.channels, self.n_classes = window, channels, n_classes
        self.cell, self.bidirectional = cell, bidirectional
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_cls(channels, hidden, num_layers=layers, batch_first=True,
                           bidirectional=bidirectional,
                           dropout=dropout if layers > 1 else 0.0)
        self.directions = 2 if bidirectional else 1
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(hidden * self.directions, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, window, channels)`` -> logits ``(B, n_classes)``."""
        _check_input(x, self.window, self.channels)
        _, h_n = self.rnn(x)
        if isinstance(h_n, tuple):                     # LSTM: (h_n, c_n)
            h_n = h_n[0]
        # h_n: (layers * directions, B, hidden); the last layer's are at the end.
        last = h_n[-self.directions:]                  # (directions, B, hidden)
        z = last.transpose(0, 1).reshape(x.shape[0], -1)   # (B, directions*hidden)
        return self.fc(self.dropout(z))


#: Model name -> constructor ``(window, channels, n_classes, **kwargs) -> nn.Module``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN1d,
    "lstm": partial(RNN, cell="lstm"),
    "gru": partial(RNN, cell="gru"),
    "bilstm": partial(RNN, cell="lstm", bidirectional=True),
    "bigru": partial(RNN, cell="gru", bidirectional=True),
}


def build_model(name: str, window: int, channels: int, n_classes: int, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` (see :data:`MODELS`).

    ``kwargs`` go to the constructor (e.g. ``hidden=64`` for an RNN).

    >>> build_model("cnn", 30, 1, 2, filters=(8, 16)).fc
    Linear(in_features=16, out_features=2, bias=True)
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    model = MODELS[key](window, channels, n_classes, **kwargs)
    # What it takes to build the same network again elsewhere: the grader rebuilds a
    # group's model from this and its weights alone, never from the group's code.
    model.config = {"name": key, "window": int(window), "channels": int(channels),
                    "n_classes": int(n_classes),
                    "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}}
    return model


def from_config(config: dict) -> nn.Module:
    """A fresh model built from the ``config`` that :func:`build_model` attached.

    >>> m = build_model("gru", 20, 12, 4, hidden=16)
    >>> count_parameters(from_config(m.config)) == count_parameters(m)
    True
    """
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.get("kwargs", {}).items()}
    return build_model(config["name"], config["window"], config["channels"], config["n_classes"],
                       **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

"""An independent reference of the training arithmetic, in NumPy float64 (no JAX anywhere).

It is written from the Keras definitions, not from the package's code, so that the package's
training core (however it is laid out) can be pinned against it:

- the model: `Dense(relu)` x depth, then `Dense(1)`, one logit per row; rows are multi-hot
  (CSR or dense), `x @ kernel + bias`;
- the loss: binary cross-entropy from logits, `max(z, 0) - z y + log(1 + exp(-|z|))` (stable
  for any `z`), averaged over the rows, plus Keras' `kernel_regularizer` penalty
  `l1 sum|w| + l2 sum w^2` over the HIDDEN kernels only (the output layer and every bias
  are not penalised);
- the optimiser: Keras 3 `RMSprop(rho=0.9, epsilon=1e-7)`, no momentum, not centred,
  `nu <- 0.9 nu + 0.1 g^2` from `nu = 0`, with epsilon INSIDE the square root, plus decoupled
  weight decay scaled by the learning rate:
  `p <- p - lr (g / sqrt(nu + eps) + wd p)`;
- the metrics, as Keras' `fit` reports them: each step's training loss and accuracy are
  measured on the weights BEFORE that step's update, the loss includes the penalty, accuracy
  counts `logit > 0` against `label > 0.5`; validation figures are measured after the epoch.

Only full-batch training is modelled (one step per epoch), so no data order is involved. The
gradients are written out by hand (backpropagation through relu layers), not taken by autodiff.

Parameters use the package's Flax names: {"hidden_0": {"kernel": [in, out], "bias": [out]}, ...,
"hidden_{n-1}": ..., "output": {"kernel": [units, 1], "bias": [1]}}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.sparse as sp

Params = dict[str, dict[str, np.ndarray]]

RHO = 0.9
EPSILON = 1e-7


@dataclasses.dataclass(frozen=True)
class Settings:
    """One model's training numbers (as in `ModelConfig`; no dropout: its random streams are
    the package's own and cannot be reproduced here)."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    l1: float = 0.0
    l2: float = 0.0


def layer_names(params: Params) -> list[str]:
    """["hidden_0", ..., "hidden_{n-1}", "output"]: the layers in the order the data flows."""
    hidden = sorted((name for name in params if name.startswith("hidden_")), key=lambda name: int(name.split("_")[1]))
    return [*hidden, "output"]


def penalised_layers(params: Params) -> list[str]:
    """The layers whose kernels Keras' `kernel_regularizer` applies to: the hidden ones."""
    return [name for name in layer_names(params) if name != "output"]


def as_float64(params: Any) -> Params:
    """A float64 NumPy copy of a params tree (JAX, NumPy or any array-likes)."""
    return {
        layer: {name: np.array(value, np.float64) for name, value in values.items()} for layer, values in params.items()
    }


def dense_rows(x: Any) -> np.ndarray:
    """float64[rows, words] of CSR or dense rows (duplicate CSR entries summed, as `toarray`)."""
    return np.asarray(x.toarray() if sp.issparse(x) else x, np.float64)


def forward(params: Params, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Logits float64[rows], every layer's input activations and every hidden pre-activation.

    Returns:
      (logits, inputs: [x, relu(z_0), ..., relu(z_{n-1})], pre_activations: [z_0, ..., z_{n-1}]).
    """
    inputs, pre_activations = [x], []
    for layer in layer_names(params)[:-1]:
        z = inputs[-1] @ params[layer]["kernel"] + params[layer]["bias"]
        pre_activations.append(z)
        inputs.append(np.maximum(z, 0.0))
    logits = inputs[-1] @ params["output"]["kernel"][:, 0] + params["output"]["bias"][0]
    return logits, inputs, pre_activations


def bce_from_logits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row binary cross-entropy of `sigmoid(logits)` against 0/1 labels, stable for any logit."""
    return np.maximum(logits, 0.0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def kernel_penalty(params: Params, l1: float, l2: float) -> float:
    """`l1 sum|w| + l2 sum w^2` over the penalised kernels."""
    kernels = [params[layer]["kernel"] for layer in penalised_layers(params)]
    return float(l1 * sum(np.abs(k).sum() for k in kernels) + l2 * sum(np.square(k).sum() for k in kernels))


def metrics(params: Params, x: np.ndarray, labels: np.ndarray, settings: Settings) -> dict[str, float]:
    """{"loss": mean BCE + penalty, "accuracy"} of rows `x` (float64[rows, words])."""
    logits = forward(params, x)[0]
    loss = bce_from_logits(logits, labels).mean() + kernel_penalty(params, settings.l1, settings.l2)
    accuracy = np.mean((logits > 0) == (labels > 0.5))
    return {"loss": float(loss), "accuracy": float(accuracy)}


def gradients(params: Params, x: np.ndarray, labels: np.ndarray, settings: Settings) -> Params:
    """Gradient of `metrics(...)["loss"]` with respect to every parameter, by backpropagation.

    d BCE / d logit = sigmoid(logit) - label; relu passes the gradient where its input is > 0
    (0 at the kink, as JAX's relu); d|w|/dw = sign(w).
    """
    logits, inputs, pre_activations = forward(params, x)
    upstream = (0.5 * (1.0 + np.tanh(0.5 * logits)) - labels)[:, None] / len(labels)  # [rows, 1]
    names = layer_names(params)
    grads: Params = {}
    for index in range(len(names) - 1, -1, -1):
        layer = names[index]
        grads[layer] = {"kernel": inputs[index].T @ upstream, "bias": upstream.sum(axis=0)}
        if index > 0:
            upstream = (upstream @ params[layer]["kernel"].T) * (pre_activations[index - 1] > 0)
    for layer in penalised_layers(params):
        kernel = params[layer]["kernel"]
        grads[layer]["kernel"] = grads[layer]["kernel"] + settings.l1 * np.sign(kernel) + 2.0 * settings.l2 * kernel
    return grads


def rmsprop_update(params: Params, nu: Params, grads: Params, settings: Settings) -> tuple[Params, Params]:
    """One Keras rmsprop step with decoupled weight decay: new (params, nu)."""
    new_params: Params = {}
    new_nu: Params = {}
    for layer, values in params.items():
        new_params[layer], new_nu[layer] = {}, {}
        for name, p in values.items():
            g = grads[layer][name]
            v = RHO * nu[layer][name] + (1.0 - RHO) * np.square(g)
            new_nu[layer][name] = v
            new_params[layer][name] = p - settings.learning_rate * (
                g / np.sqrt(v + EPSILON) + settings.weight_decay * p
            )
    return new_params, new_nu


def zeros_like(params: Params) -> Params:
    return {layer: {name: np.zeros_like(value) for name, value in values.items()} for layer, values in params.items()}


def fit_full_batch(
    params: Any,
    train: tuple[Any, Any],
    validation: tuple[Any, Any] | None,
    settings: Settings,
    *,
    epochs: int,
) -> tuple[Params, dict[str, list[float]]]:
    """`epochs` full-batch rmsprop steps from `params`, with Keras' history.

    Args:
      params: initial weights (any arrays; copied to float64).
      train, validation: (rows, labels), rows CSR or dense multi-hot.
      settings: the model's numbers.
      epochs: steps (one per epoch: the whole training set is one batch).

    Returns:
      The trained float64 params and {"loss", "accuracy"[, "val_loss", "val_accuracy"]}, one
      value per epoch: the training figures before each update, the validation ones after it.
    """
    params = as_float64(params)
    x, labels = dense_rows(train[0]), np.asarray(train[1], np.float64)
    nu = zeros_like(params)
    history: dict[str, list[float]] = {"loss": [], "accuracy": []}
    if validation is not None:
        history.update(val_loss=[], val_accuracy=[])
        val_x, val_labels = dense_rows(validation[0]), np.asarray(validation[1], np.float64)
    for _ in range(epochs):
        before = metrics(params, x, labels, settings)
        params, nu = rmsprop_update(params, nu, gradients(params, x, labels, settings), settings)
        history["loss"].append(before["loss"])
        history["accuracy"].append(before["accuracy"])
        if validation is not None:
            after = metrics(params, val_x, val_labels, settings)
            history["val_loss"].append(after["loss"])
            history["val_accuracy"].append(after["accuracy"])
    return params, history


def smallest_margin(params: Any, train: tuple[Any, Any], validation: Any, settings: Settings, *, epochs: int) -> float:
    """The smallest non-zero |pre-activation| or |logit| met on the training and validation rows
    by the weights of every step of `fit_full_batch` (the start's, each update's).

    A float32 run can take the other side of a relu kink (or of `logit > 0`) where this is at
    float32 rounding's scale, and so differ from this reference by more than float32 noise
    without any error in its arithmetic. Exact zeros are left out: they come from a row whose
    inputs to a layer are all zero, with a zero bias, and float32 computes them exactly too.

    Args:
      params, train, settings, epochs: as in `fit_full_batch`.
      validation: (rows, labels), or None.
    """
    params = as_float64(params)
    x, labels = dense_rows(train[0]), np.asarray(train[1], np.float64)
    row_sets = [x] if validation is None else [x, dense_rows(validation[0])]
    nu = zeros_like(params)
    margin = np.inf
    for step in range(epochs + 1):
        for rows in row_sets:
            logits, _, pre_activations = forward(params, rows)
            for values in (logits, *pre_activations):
                margin = min(margin, float(np.abs(values[values != 0]).min(initial=np.inf)))
        if step < epochs:
            params, nu = rmsprop_update(params, nu, gradients(params, x, labels, settings), settings)
    return margin

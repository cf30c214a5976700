"""The train step, one pure function: `(state, batch) -> (state, metrics)`.

Apart from `vivit.train` so that benchmarks can run it where the data stack
(TensorFlow, TFDS) is not installed.
"""
from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def mixup(rng, video, labels, alpha: float):
  """Mixes each example with its neighbour in the batch, one Beta(alpha, alpha)
  weight per batch: `video [batch, ...]`, `labels [batch, classes]`."""
  weight = jax.random.beta(rng, alpha, alpha)
  mix = lambda x: weight * x + (1 - weight) * jnp.roll(x, 1, axis=0)
  return mix(video), mix(labels)


def train_step(state: TrainState, batch: Dict[str, jax.Array], *, model, optimizer,
               training: ml_collections.ConfigDict, num_classes: int, seed: int):
  """One SGD step: `(state, batch) -> (state, metrics)`. Pure; RNG from the step."""
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), state.step)
  mix_rng, dropout_rng = jax.random.split(rng)
  video, labels = batch['video'], jax.nn.one_hot(batch['label'], num_classes)
  if training.label_smoothing:
    labels = optax.smooth_labels(labels, training.label_smoothing)
  if training.mixup:
    video, labels = mixup(mix_rng, video, labels, training.mixup)

  def loss_fn(params):
    logits = model.apply({'params': params}, video, train=True,
                         rngs={'dropout': dropout_rng})
    return optax.softmax_cross_entropy(logits, labels).mean(), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss,
             'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label']),
             'grad_norm': optax.global_norm(grads)}
  return TrainState(state.step + 1, params, opt_state), metrics

"""Per-layer statistics of activations and gradients, recorded by hooks while a model trains.

For every hooked layer and every recorded training batch this keeps, for the layer's output
``y`` (the *activation*) and for ``dL/dy`` (the *gradient* arriving at that output during our
own ``bwd``, no autograd involved):

- ``mean`` and ``std`` of all elements;
- ``near_zero``: the fraction of elements with ``|v| < threshold``. The thresholds are absolute:
  ``act_zero=1e-3`` for activations (which a good init keeps at a scale of about 1, so this
  counts the zeros a ReLU produces) and ``grad_zero=1e-8`` for gradients (whose scale shrinks
  with the batch size of a mean loss; this counts, in practice, the exact zeros that an
  inactive ReLU sends back);
- ``hist``: a histogram with a fixed number of bins (40 by default), for the "colorful
  dimension" plots (one column per batch, one row per bin).

  Activations are binned linearly. The range is chosen per layer from the first recorded batch:
  ``[0, R]`` when that batch had no negative value (a ReLU's output), else ``[-R, R]``, with
  ``R`` four times the largest ``|y|`` seen, rounded up to 1, 2, 2.5 or 5 times a power of ten, so
  that later growth stays visible. Gradients span many orders of magnitude and their sign
  tells little, so they are binned by ``log10 |dL/dy|`` over a range chosen the same way:
  from 4 decades below the first batch's 1st percentile of the non-zero magnitudes up to 2
  decades above its largest. Exact zeros are left out of the gradient histogram (``near_zero``
  counts them). In both kinds, values beyond the range are counted in the outermost bins, so
  no element is lost and saturation shows as a bright edge.

The hooks count training batches themselves (every forward of the model in training mode is
one batch; evaluation-mode forwards are neither counted nor recorded) and record batch 0 and
every ``every``-th batch after it (default 10). Statistics stay on the tensors' device until
read, so recording never waits for the device. Recording a batch costs about a dozen
element-wise passes over each layer's output and gradient: for a small MLP on the CPU that is
as much as the training step itself, hence the default of one batch in ten
(``benchmarks/bench_stats.py`` measures it).

Use them with a :class:`~handgrad.train.learner.Learner` through the callbacks
:class:`ActivationStats` and :class:`GradientStats`, or on their own::

    with StatsHooks(model, every=10) as hooks:
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            model.backward(loss_fn.backward()[0])
    hooks.activations["layers.1"].std        # (recorded batches,)
"""

from handgrad.train.stats.dead_units import DeadUnits, dead_units, predict_logits, stats_summary
from handgrad.train.stats.histograms import (
    ACT_ZERO,
    BINS,
    GRAD_ZERO,
    LayerStats,
    activation_edges,
    gradient_edges,
    nice_ceil,
    summarize,
)
from handgrad.train.stats.hooks import ActivationStats, GradientStats, StatsHooks

__all__ = [
    "ACT_ZERO",
    "BINS",
    "GRAD_ZERO",
    "ActivationStats",
    "DeadUnits",
    "GradientStats",
    "LayerStats",
    "StatsHooks",
    "activation_edges",
    "dead_units",
    "gradient_edges",
    "nice_ceil",
    "predict_logits",
    "stats_summary",
    "summarize",
]

// handgrad's fast path: one training step of a Linear/ReLU network, in one C++ call.
//
// The same math as the readable Python path (handgrad/functional: linear.py, activations.py,
// losses.py), in the same order, mostly with the same ATen kernels (cross-entropy uses ATen's
// one-kernel log_softmax, the same max-shifted log-sum-exp), so the results agree to rounding:
// tests/test_fast.py checks the weights after N steps, to 1e-10 in float64. What this file removes is
// the Python between the kernels: at batch 64 a step is ~20 small kernels, and the Python
// bookkeeping around each (the Module contract, argument parsing, tensor wrappers) costs
// more than the arithmetic.
//
// Layout as in handgrad: weight (in, out), bias (out,). The only differences from the Python
// path are memory-saving ones that are safe here because nothing outside sees the
// intermediates: ReLU runs in place on the fresh GEMM output, and its backward reads the
// ReLU's output (out > 0 exactly where in > 0), so no mask and no pre-activation are kept.
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/full.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/nll_loss.h>
#include <ATen/ops/threshold_backward.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using at::Tensor;

enum LossKind : int64_t { kCrossEntropy = 0, kMSE = 1 };

// Returns {preds, loss, dx (undefined unless need_dx), dW0, db0, dW1, db1, ...}; a bias
// gradient is undefined (None) where the layer has no bias.
std::vector<Tensor> mlp_step(const Tensor& x, const Tensor& target,
                             const std::vector<Tensor>& weights,
                             const std::vector<std::optional<Tensor>>& biases,
                             const std::vector<bool>& relu_after, int64_t loss_kind,
                             double label_smoothing, bool need_dx) {
  c10::AutoGradMode no_autograd(false);  // hand-written gradients: no graph is ever recorded
  const size_t L = weights.size();
  if (biases.size() != L || relu_after.size() != L || L == 0) {
    throw std::invalid_argument("mlp_step: weights, biases and relu flags differ in length");
  }
  if (x.dim() != 2 || x.size(1) != weights[0].size(0)) {
    throw std::invalid_argument("mlp_step: expected input (N, " +
                                std::to_string(weights[0].size(0)) + ")");
  }

  // ---- forward: h_{k+1} = relu?(h_k @ W_k + b_k); acts[k] is layer k's input
  std::vector<Tensor> acts;
  acts.reserve(L + 1);
  acts.push_back(x);  // (N, in)
  for (size_t k = 0; k < L; ++k) {
    Tensor h = biases[k] ? at::addmm(*biases[k], acts[k], weights[k])  // (N, out_k)
                         : at::mm(acts[k], weights[k]);
    if (relu_after[k]) h.clamp_min_(0);  // in place: the pre-activation is never needed
    acts.push_back(h);
  }
  const Tensor preds = acts[L];  // (N, C)
  const int64_t n = preds.size(0);

  // ---- loss and dL/dpreds
  Tensor loss, d;
  if (loss_kind == kCrossEntropy) {
    // L = (1 - eps) nll - eps mean(log p); dL/dz = (softmax(z) - t) / N,
    // t = (1 - eps) onehot(y) + eps / C: softmax and log-likelihood fuse into p - t.
    const int64_t c = preds.size(1);
    Tensor logp = at::log_softmax(preds, 1);  // (N, C)
    loss = at::nll_loss(logp, target);        // mean of -log p[n, y_n]; checks the labels
    if (label_smoothing != 0.0) {
      loss = loss.mul(1.0 - label_smoothing).sub_(logp.mean().mul_(label_smoothing));
    }
    d = logp.exp_();  // (N, C) softmax, in place: log p is no longer needed
    if (label_smoothing != 0.0) d.sub_(label_smoothing / static_cast<double>(c));
    d.scatter_add_(1, target.unsqueeze(1),
                   at::full({1, 1}, label_smoothing - 1.0, d.options()).expand({n, 1}));
    d.mul_(1.0 / static_cast<double>(n));
  } else {
    // L = mean((preds - target)^2) over M elements; dL/dpreds = 2 (preds - target) / M.
    if (preds.numel() != target.numel()) {
      throw std::invalid_argument("mlp_step: predictions and targets differ in size");
    }
    Tensor diff = preds.reshape(target.sizes()).sub(target);  // target's shape
    loss = diff.square().mean();
    d = diff.mul_(2.0 / static_cast<double>(diff.numel())).reshape(preds.sizes());
  }

  // ---- backward, last layer first: dW = h^T @ d, db = sum_n d, d <- d @ W^T
  std::vector<Tensor> out(3 + 2 * L);
  out[0] = preds;
  out[1] = loss;
  for (size_t k = L; k-- > 0;) {
    if (relu_after[k]) d = at::threshold_backward(d, acts[k + 1], 0);  // d * (out > 0)
    out[3 + 2 * k] = at::mm(acts[k].t(), d);                           // (in_k, out_k)
    if (biases[k]) out[4 + 2 * k] = d.sum(0);                          // (out_k,)
    if (k > 0 || need_dx) d = at::mm(d, weights[k].t());               // (N, in_k)
    acts[k + 1] = Tensor();  // free each activation as soon as its last use is done
  }
  if (need_dx) out[2] = d;  // (N, in)
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "handgrad fast path: one fused forward+backward call for Linear/ReLU networks";
  m.def("mlp_step", &mlp_step, "forward + backward of a Linear/ReLU net with CE or MSE",
        pybind11::arg("x"), pybind11::arg("target"), pybind11::arg("weights"),
        pybind11::arg("biases"), pybind11::arg("relu_after"), pybind11::arg("loss_kind"),
        pybind11::arg("label_smoothing"), pybind11::arg("need_dx"));
}

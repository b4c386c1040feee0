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
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/full.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/nll_loss.h>
#include <ATen/ops/threshold_backward.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using at::Tensor;

enum LossKind : int64_t { kCrossEntropy = 0, kMSE = 1 };

// Below this many elements a hand-written loop beats a chain of ATen kernels: at batch 64 each
// kernel launch (dispatch, allocation, TensorIterator setup) costs more than its arithmetic.
// Above it, ATen's vectorised, multi-threaded kernels win.
constexpr int64_t kSmall = 1 << 16;

// Cross-entropy forward and backward in one pass over the rows of z (N, C):
//   log p_nc = z_nc - m_n - log(sum_c exp(z_nc - m_n)),  m_n = max_c z_nc (no overflow);
//   L = -(1/N) sum_n [(1 - eps) log p_{n,y_n} + (eps / C) sum_c log p_nc];
//   d = dL/dz = (p - t) / N,  t = (1 - eps) onehot(y) + eps / C.
// Returns L (accumulated in double); writes d.
template <typename T>
double cross_entropy_fused(const T* z, const int64_t* y, T* d, int64_t n, int64_t c,
                           double eps) {
  double total = 0.0;
  const T inv_n = T(1) / static_cast<T>(n);
  const T uniform = static_cast<T>(eps / static_cast<double>(c));
  for (int64_t i = 0; i < n; ++i) {
    const T* zi = z + i * c;
    T* di = d + i * c;
    const int64_t label = y[i];
    if (label < 0 || label >= c) throw std::out_of_range("label out of range");
    const T m = *std::max_element(zi, zi + c);
    T sum = 0;
    for (int64_t j = 0; j < c; ++j) {
      di[j] = std::exp(zi[j] - m);
      sum += di[j];
    }
    const T lse = m + std::log(sum);  // log sum_c exp(z_nc)
    double row = -(1.0 - eps) * static_cast<double>(zi[label] - lse);
    if (eps != 0.0) {
      double sum_logp = 0.0;
      for (int64_t j = 0; j < c; ++j) sum_logp += static_cast<double>(zi[j] - lse);
      row -= eps / static_cast<double>(c) * sum_logp;
    }
    total += row;
    const T inv_sum = T(1) / sum;
    for (int64_t j = 0; j < c; ++j) di[j] = (di[j] * inv_sum - uniform) * inv_n;
    di[label] -= static_cast<T>(1.0 - eps) * inv_n;
  }
  return total / static_cast<double>(n);
}

// ReLU backward and the bias gradient in one pass: d <- d * (h > 0) in place (h is the ReLU's
// output: positive exactly where its input was), db_j = sum_n d_nj. Either step may be off.
template <typename T>
void relu_bias_backward(T* d, const T* h, T* db, int64_t n, int64_t m) {
  if (db != nullptr) std::fill(db, db + m, T(0));
  for (int64_t i = 0; i < n; ++i) {
    T* di = d + i * m;
    if (h != nullptr) {
      const T* hi = h + i * m;
      for (int64_t j = 0; j < m; ++j) di[j] = hi[j] > T(0) ? di[j] : T(0);
    }
    if (db != nullptr) {
      for (int64_t j = 0; j < m; ++j) db[j] += di[j];
    }
  }
}

void check_shapes(const Tensor& x, const std::vector<Tensor>& weights,
                  const std::vector<std::optional<Tensor>>& biases,
                  const std::vector<bool>& relu_after) {
  const size_t L = weights.size();
  if (biases.size() != L || relu_after.size() != L || L == 0) {
    throw std::invalid_argument("mlp_step: weights, biases and relu flags differ in length");
  }
  if (x.dim() != 2 || x.size(1) != weights[0].size(0)) {
    throw std::invalid_argument("mlp_step: expected input (N, " +
                                std::to_string(weights[0].size(0)) + ")");
  }
}

// Forward: acts[0] = x, acts[k+1] = relu?(acts[k] @ W_k + b_k). ReLU runs in place on the
// fresh GEMM output: nothing needs the pre-activation.
std::vector<Tensor> forward(const Tensor& x, const std::vector<Tensor>& weights,
                            const std::vector<std::optional<Tensor>>& biases,
                            const std::vector<bool>& relu_after) {
  std::vector<Tensor> acts;
  acts.reserve(weights.size() + 1);
  acts.push_back(x);  // (N, in)
  for (size_t k = 0; k < weights.size(); ++k) {
    Tensor h = biases[k] ? at::addmm(*biases[k], acts[k], weights[k])  // (N, out_k)
                         : at::mm(acts[k], weights[k]);
    if (relu_after[k]) h.clamp_min_(0);
    acts.push_back(h);
  }
  return acts;
}

// Inference: the network's output for x (no loss, nothing kept).
Tensor mlp_predict(const Tensor& x, const std::vector<Tensor>& weights,
                   const std::vector<std::optional<Tensor>>& biases,
                   const std::vector<bool>& relu_after) {
  c10::AutoGradMode no_autograd(false);
  check_shapes(x, weights, biases, relu_after);
  return forward(x, weights, biases, relu_after).back();
}

// Rows from which dW is computed as (d^T @ h)^T plus a copy: for tall inputs MKL runs the
// (out, in)-shaped product about 15% faster than the (in, out)-shaped one, and the copy of
// dW is negligible next to it; for small batches the copy costs more than it saves.
constexpr int64_t kTall = 4096;

// Training step. Returns {preds, loss, dx (undefined unless need_dx), dW0, db0, dW1, db1, ...};
// a bias gradient is undefined (None) where the layer has no bias. dx_out, when given, is a
// buffer the caller no longer uses: dx is written into it instead of into fresh memory;
// loss_out, a 0-dim slot (same dtype) the loss is written into.
//
// With sgd, the step also applies plain SGD, p <- p - lr (g + wd p) = (1 - lr wd) p - lr g,
// and returns no parameter gradients (undefined): each weight's update is one GEMM,
// W <- (1 - lr wd) W - lr h^T d (addmm's beta and alpha), so dW is never written to memory
// and read back, and no optimizer call follows. Layer k's update comes after the gradient
// it passes back (d @ W_k^T), which needs the weights from before the step.
std::vector<Tensor> mlp_step(const Tensor& x, const Tensor& target,
                             const std::vector<Tensor>& weights,
                             const std::vector<std::optional<Tensor>>& biases,
                             const std::vector<bool>& relu_after, int64_t loss_kind,
                             double label_smoothing, bool need_dx,
                             const std::optional<Tensor>& dx_out,
                             const std::optional<Tensor>& loss_out, bool sgd, double lr,
                             double weight_decay) {
  c10::AutoGradMode no_autograd(false);  // hand-written gradients: no graph is ever recorded
  check_shapes(x, weights, biases, relu_after);
  const size_t L = weights.size();
  std::vector<Tensor> acts = forward(x, weights, biases, relu_after);
  const Tensor preds = acts[L];  // (N, C)
  const int64_t n = preds.size(0);

  // ---- loss and d = dL/dpreds
  Tensor loss, d;
  if (loss_kind == kCrossEntropy) {
    const int64_t c = preds.size(1);
    if (preds.numel() <= kSmall && preds.is_contiguous() && target.is_contiguous() &&
        target.scalar_type() == at::kLong) {
      d = at::empty_like(preds);  // (N, C)
      double value = 0.0;
      AT_DISPATCH_FLOATING_TYPES(preds.scalar_type(), "cross_entropy_fused", [&] {
        value = cross_entropy_fused(preds.const_data_ptr<scalar_t>(),
                                    target.const_data_ptr<int64_t>(),
                                    d.mutable_data_ptr<scalar_t>(), n, c, label_smoothing);
      });
      // The loss outlives the step (the Learner's recorder keeps every one), so it goes into a
      // slot the caller gives: a fresh 4-byte tensor per step would split a freed
      // activation's heap chunk each time, and the heap would grow by KBs per kept loss.
      loss = loss_out ? *loss_out : at::empty({}, preds.options());
      AT_DISPATCH_FLOATING_TYPES(preds.scalar_type(), "store_loss", [&] {
        *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(value);
      });
    } else {
      // The same formulas with ATen kernels (large batches): softmax and log-likelihood fuse
      // into dL/dz = (softmax(z) - t) / N.
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
    }
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
  const double keep = 1.0 - lr * weight_decay;  // SGD's weight decay, folded into a scale
  for (size_t k = L; k-- > 0;) {
    const Tensor& h = acts[k + 1];  // layer k's (ReLU) output, (N, out_k)
    Tensor db;                      // (out_k,), undefined without a bias
    if (d.numel() <= kSmall && d.is_contiguous() && h.is_contiguous()) {
      if (biases[k]) db = at::empty({d.size(1)}, d.options());
      AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "relu_bias_backward", [&] {
        relu_bias_backward(d.mutable_data_ptr<scalar_t>(),
                           relu_after[k] ? h.const_data_ptr<scalar_t>() : nullptr,
                           biases[k] ? db.mutable_data_ptr<scalar_t>() : nullptr, d.size(0),
                           d.size(1));
      });
    } else {
      if (relu_after[k]) at::threshold_backward_out(d, d, h, 0);  // d *= (out > 0), in place
      if (biases[k]) db = d.sum(0);
    }
    // The gradient for the layer below, from this layer's weights before any update.
    Tensor below;
    if (k == 0 && need_dx && dx_out && dx_out->sizes() == x.sizes() &&
        dx_out->dtype() == x.dtype() && dx_out->is_contiguous() &&
        dx_out->storage().use_count() == 1) {
      Tensor buffer = *dx_out;
      below = at::mm_out(buffer, d, weights[k].t());  // (N, in), no fresh pages to fault in
    } else if (k > 0 || need_dx) {
      below = at::mm(d, weights[k].t());  // (N, in_k)
    }
    if (sgd) {
      weights[k].addmm_(acts[k].t(), d, keep, -lr);  // W <- keep W - lr h^T d, in one GEMM
      if (biases[k]) {
        if (keep != 1.0) biases[k]->mul_(keep);
        biases[k]->add_(db, -lr);
      }
    } else {
      out[3 + 2 * k] = n >= kTall ? at::mm(d.t(), acts[k]).t().contiguous()  // (in_k, out_k)
                                  : at::mm(acts[k].t(), d);
      if (biases[k]) out[4 + 2 * k] = db;
    }
    d = below;
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
        pybind11::arg("label_smoothing"), pybind11::arg("need_dx"), pybind11::arg("dx_out"),
        pybind11::arg("loss_out"), pybind11::arg("sgd") = false, pybind11::arg("lr") = 0.0,
        pybind11::arg("weight_decay") = 0.0);
  m.def("mlp_predict", &mlp_predict, "forward pass of a Linear/ReLU net", pybind11::arg("x"),
        pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("relu_after"));
}

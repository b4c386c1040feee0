// handgrad's fast path: one training step of a multi-layer perceptron, in one C++ call.
//
// The model is a list of layers (handgrad/fast/plan.py builds it from a Sequential): Linear,
// an element-wise activation (ReLU, LeakyReLU, GeneralRelu, GELU, SiLU, Tanh, Sigmoid),
// Dropout (its uniform draws made by the caller, from the layer's own random stream) and
// BatchNorm1d. The math is handgrad/nn/functional's, step for step and in the same order of
// floating-point operations, so the results agree with the readable path to rounding:
// tests/fast/ checks the weights after N steps against it. What this file removes is the
// Python between the kernels, and memory passes: the activation's backward and the bias
// gradient share one pass, and the optimizer's update (SGD with momentum/Nesterov/decay, Adam,
// AdamW: handgrad/optim/rules.py) is one loop over each parameter and its state, right after
// the GEMM that produced its gradient.
//
// Layout as in handgrad: weight (in, out), bias (out,). Memory-saving differences from the
// Python path, safe because nothing outside sees the intermediates: ReLU, Tanh and Sigmoid run
// in place on a fresh layer output (their backward reads the output), and dW lands in a
// buffer the caller keeps between steps when the update is fused (no fresh pages per step).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/nll_loss.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/threshold_backward.h>
#include <ATen/ops/zeros_like.h>
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
using OptTensor = std::optional<Tensor>;

enum LossKind : int64_t { kCrossEntropy = 0, kMSE = 1 };
enum LayerKind : int64_t { kLinear = 0, kActivation = 1, kDropout = 2, kBatchNorm = 3 };
enum Act : int64_t {
  kReLU = 0, kLeakyReLU = 1, kGeneralRelu = 2, kGELU = 3, kGELUTanh = 4, kSiLU = 5,
  kTanh = 6, kSigmoid = 7
};
enum OptKind : int64_t { kNoUpdate = 0, kSGD = 1, kAdam = 2 };
constexpr int64_t kSlots = 4;  // tensors per layer in `tensors` (see mlp_step)

// Below this many elements a hand-written loop beats a chain of ATen kernels: at batch 64 each
// kernel launch (dispatch, allocation, TensorIterator setup) costs more than its arithmetic.
// Above it, ATen's vectorised, multi-threaded kernels win.
constexpr int64_t kSmall = 1 << 16;
constexpr int64_t kGrain = 1 << 15;  // elements per thread in the element-wise loops

// ------------------------------------------------------------------------------ loss
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

// ------------------------------------------------------------------------- activations
// One activation's parameters: GeneralRelu's leak (0: none), sub (0: none) and maxv (when
// has_maxv), LeakyReLU's slope in `leak`.
struct ActParams {
  int64_t code = kReLU;
  double leak = 0.0, sub = 0.0, maxv = 0.0;
  bool has_maxv = false;
};

// Whether the backward reads the output (then the forward may overwrite its input).
bool from_output(int64_t code) { return code == kReLU || code == kTanh || code == kSigmoid; }

constexpr double kSqrt2 = 1.41421356237309504880;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluCubic = 0.044715;

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// y = f(x), written as handgrad/nn/functional/activations.py writes it (same operation order).
template <typename T>
inline T act_forward(T x, const ActParams& a) {
  switch (a.code) {
    case kLeakyReLU: return x > T(0) ? x : x * T(a.leak);
    case kGeneralRelu: {
      T y = a.leak != 0.0 ? (x > T(0) ? x : x * T(a.leak)) : std::max(x, T(0));
      if (a.sub != 0.0) y = y - T(a.sub);
      if (a.has_maxv) y = std::min(y, T(a.maxv));
      return y;
    }
    case kGELU: return x * T(0.5) * (T(1) + std::erf(x / T(kSqrt2)));
    case kGELUTanh: {
      const T u = T(kSqrt2OverPi) * (x + T(kGeluCubic) * (x * x * x));
      return T(0.5) * x * (T(1) + std::tanh(u));
    }
    case kSiLU: return x * sigmoid(x);
    case kTanh: return std::tanh(x);
    case kSigmoid: return sigmoid(x);
    default: return std::max(x, T(0));  // ReLU
  }
}

// dx = dy * f'(x), with x the input and y the output (the backward reads whichever the
// readable path reads).
template <typename T>
inline T act_backward(T dy, T x, T y, const ActParams& a) {
  switch (a.code) {
    case kLeakyReLU: return x > T(0) ? dy : dy * T(a.leak);
    case kGeneralRelu: {
      const bool pos = x > T(0);
      T dx = a.leak != 0.0 ? (pos ? dy : dy * T(a.leak)) : dy * T(pos);
      if (a.has_maxv) {
        T pre = a.leak != 0.0 ? (pos ? x : x * T(a.leak)) : std::max(x, T(0));
        if (a.sub != 0.0) pre = pre - T(a.sub);
        dx = dx * T(pre <= T(a.maxv));
      }
      return dx;
    }
    case kGELU: {
      const T cdf = T(0.5) * (T(1) + std::erf(x / T(kSqrt2)));
      const T pdf = std::exp(T(-0.5) * x * x) * T(kInvSqrt2Pi);
      return dy * (cdf + x * pdf);
    }
    case kGELUTanh: {
      const T t = std::tanh(T(kSqrt2OverPi) * (x + T(kGeluCubic) * (x * x * x)));
      const T du = T(kSqrt2OverPi) * (T(1) + T(3.0 * kGeluCubic) * x * x);
      return dy * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du);
    }
    case kSiLU: {
      const T s = sigmoid(x);
      return dy * s * (T(1) + x * (T(1) - s));
    }
    case kTanh: return dy * (T(1) - y * y);
    case kSigmoid: return dy * y * (T(1) - y);
    default: return y > T(0) ? dy : T(0);  // ReLU: threshold_backward's select
  }
}

// y = f(x) over a whole tensor (y may be x: in place).
void activation_forward(const Tensor& x, Tensor& y, const ActParams& a) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "activation_forward", [&] {
    const scalar_t* px = x.const_data_ptr<scalar_t>();
    scalar_t* py = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) py[i] = act_forward(px[i], a);
    });
  });
}

// d <- d * f'(x) in place, and (when db is given) db_j = sum_n d_nj in the same pass, over d's
// (n, m) rows. x or y may be undefined where this activation does not read it.
void activation_backward(Tensor& d, const Tensor& x, const Tensor& y, const ActParams& a,
                         Tensor* db) {
  const int64_t n = d.size(0), m = d.numel() / std::max<int64_t>(n, 1);
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "activation_backward", [&] {
    scalar_t* pd = d.mutable_data_ptr<scalar_t>();
    const scalar_t* px = x.defined() ? x.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* py = y.defined() ? y.const_data_ptr<scalar_t>() : nullptr;
    auto at_ = [&](int64_t i) {
      return act_backward(pd[i], px ? px[i] : scalar_t(0), py ? py[i] : scalar_t(0), a);
    };
    if (db == nullptr) {
      at::parallel_for(0, d.numel(), kGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) pd[i] = at_(i);
      });
      return;
    }
    scalar_t* pb = db->mutable_data_ptr<scalar_t>();
    std::fill(pb, pb + m, scalar_t(0));
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t j = 0; j < m; ++j) {
        const int64_t i = r * m + j;
        pd[i] = at_(i);
        pb[j] += pd[i];
      }
    }
  });
}

// -------------------------------------------------------------------------- batch norm
// handgrad/nn/functional/norm.py's fused_batchnorm_forward/_backward for (N, C) inputs, with
// the same ATen calls in the same order: y = x * scale + shift per channel.
struct NormCache {
  Tensor x3, mean, inv_std;  // (N, C, 1), (1, C, 1), (1, C, 1)
};

Tensor plane(const Tensor& v, const Tensor& like) {
  return v.expand({1, like.size(1), like.size(2)}).contiguous();
}

Tensor batchnorm_forward(const Tensor& x, const OptTensor& gamma, const OptTensor& beta,
                         const OptTensor& running_mean, const OptTensor& running_var,
                         bool training, bool update, double momentum, double eps,
                         NormCache* cache) {
  const Tensor x3 = x.reshape({x.size(0), x.size(1), 1});  // (N, C, 1)
  Tensor mean, inv_std;
  if (training) {
    const double m = static_cast<double>(x.size(0));
    if (x.size(0) < 2) throw std::invalid_argument("batch norm needs a batch larger than 1");
    mean = x3.sum(2).sum(0).div_(m).view({1, -1, 1});  // (1, C, 1)
    Tensor var = (x3 - mean).square_().sum(2).sum(0).div_(m);  // (C,)
    if (update && running_mean && running_var) {  // PyTorch's: unbiased variance goes in
      running_mean->lerp_(mean.reshape(-1), momentum);
      running_var->lerp_(var.reshape(-1) * (m / (m - 1)), momentum);
    }
    inv_std = (var + eps).rsqrt_().view({1, -1, 1});
  } else {
    mean = running_mean->view({1, -1, 1});
    inv_std = at::rsqrt(*running_var + eps).view({1, -1, 1});
  }
  const Tensor scale = gamma ? gamma->view({1, -1, 1}) * inv_std : inv_std;
  const Tensor shift = beta ? at::addcmul(beta->view({1, -1, 1}), mean, scale, -1.0)
                            : -mean * scale;
  if (cache != nullptr) *cache = {x3, mean, inv_std};
  return at::addcmul(shift, x3, plane(scale, x3)).view(x.sizes());
}

// Returns dx (undefined unless need_dx); writes dgamma, dbeta.
Tensor batchnorm_backward(const Tensor& dout, const NormCache& c, const OptTensor& gamma,
                          bool need_dx, Tensor* dgamma, Tensor* dbeta) {
  const Tensor dy = dout.reshape(c.x3.sizes());  // (N, C, 1)
  const double m = static_cast<double>(c.x3.size(0));
  Tensor buf = at::addcmul(plane(-c.mean * c.inv_std, c.x3), c.x3, plane(c.inv_std, c.x3));
  const Tensor sum_dy = dy.sum(2).sum(0).view({1, -1, 1});
  const Tensor sum_dy_xhat = buf.mul_(dy).sum(2).sum(0).view({1, -1, 1});
  *dgamma = sum_dy_xhat.view(-1);
  *dbeta = sum_dy.view(-1);
  if (!need_dx) return Tensor();
  const Tensor a = gamma ? gamma->reshape({1, -1, 1}) * c.inv_std : c.inv_std;
  const Tensor k = a * (-1.0 / m);
  const Tensor b = k * sum_dy_xhat * c.inv_std;
  const Tensor cc = at::addcmul(k * sum_dy, b, c.mean, -1.0);
  Tensor dx = at::addcmul_out(buf, plane(cc, c.x3), c.x3, plane(b, c.x3));
  return dx.addcmul_(dy, a).view(dout.sizes());
}

// -------------------------------------------------------------------- vectorised loops
// The hot element-wise loops are compiled for AVX-512, AVX2 and plain x86-64, the best picked
// when the module loads (GCC's target_clones): one build runs on any x86 CPU, vectorised.
// Written branch-free inside (the choices are template arguments), with the operations in
// the readable path's order; the build turns off FMA contraction so the rounding stays so.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HG_CLONES
#endif
#define HG_INLINE inline __attribute__((always_inline))

// d <- d * (h > 0) (h: the ReLU's output, positive exactly where its input was) and, when db
// is given, db_j = sum_n d_nj, in one pass over d (n, m).
template <typename T>
HG_INLINE void relu_bias_body(T* __restrict d, const T* __restrict h, T* __restrict db,
                              int64_t n, int64_t m) {
  if (db != nullptr) std::fill(db, db + m, T(0));
  for (int64_t i = 0; i < n; ++i) {
    T* __restrict di = d + i * m;
    const T* __restrict hi = h + i * m;
    for (int64_t j = 0; j < m; ++j) di[j] = hi[j] > T(0) ? di[j] : T(0);
    if (db != nullptr) {
      for (int64_t j = 0; j < m; ++j) db[j] += di[j];
    }
  }
}
HG_CLONES void relu_bias(float* d, const float* h, float* db, int64_t n, int64_t m) {
  relu_bias_body(d, h, db, n, m);
}
HG_CLONES void relu_bias(double* d, const double* h, double* db, int64_t n, int64_t m) {
  relu_bias_body(d, h, db, n, m);
}

// Adam's numbers, as optim/rules.py derives them (see `update`).
struct AdamK {
  double keep, wd, w, b2, one_b2, c2, eps, step;
};

template <typename T, bool kWD, bool kDecoupled, bool kLow>
HG_INLINE void adam_body(T* __restrict p, const T* __restrict g, T* __restrict m,
                         T* __restrict v, int64_t n, const AdamK& k) {
  const T keep = T(k.keep), wd = T(k.wd), w = T(k.w), one_w = T(1) - w, b2 = T(k.b2);
  const T one_b2 = T(k.one_b2), c2 = T(k.c2), eps = T(k.eps), step = T(k.step);
  for (int64_t i = 0; i < n; ++i) {
    T gi = g[i], pi = p[i];
    if (kWD) {
      if (kDecoupled) pi = pi * keep;  // AdamW: p = p (1 - lr wd)
      else gi = gi + wd * pi;          // Adam: g = g + wd p
    }
    const T mi = m[i], diff = gi - mi;
    const T mn = kLow ? mi + w * diff : gi - diff * one_w;  // ATen's lerp(m, g, w)
    T vi = v[i] * b2;
    vi = vi + one_b2 * gi * gi;
    const T denom = std::sqrt(vi) / c2 + eps;
    m[i] = mn;
    v[i] = vi;
    p[i] = pi + step * (mn / denom);
  }
}
template <typename T>
HG_INLINE void adam_pick(T* p, const T* g, T* m, T* v, int64_t n, const AdamK& k, bool wd,
                         bool decoupled) {
  const bool low = std::abs(T(k.w)) < T(0.5);
#define HG_ADAM(WD, DEC)                                  \
  (low ? adam_body<T, WD, DEC, true>(p, g, m, v, n, k) \
       : adam_body<T, WD, DEC, false>(p, g, m, v, n, k))
  if (!wd) HG_ADAM(false, false);
  else if (decoupled) HG_ADAM(true, true);
  else HG_ADAM(true, false);
#undef HG_ADAM
}
HG_CLONES void adam_loop(float* p, const float* g, float* m, float* v, int64_t n,
                         const AdamK& k, bool wd, bool decoupled) {
  adam_pick(p, g, m, v, n, k, wd, decoupled);
}
HG_CLONES void adam_loop(double* p, const double* g, double* m, double* v, int64_t n,
                         const AdamK& k, bool wd, bool decoupled) {
  adam_pick(p, g, m, v, n, k, wd, decoupled);
}

template <typename T, bool kWD, bool kMomentum, bool kNesterov>
HG_INLINE void sgd_body(T* __restrict p, const T* __restrict g, T* __restrict b, int64_t n,
                        T wd, T mom, T neg_lr) {
  for (int64_t i = 0; i < n; ++i) {
    T gi = g[i];
    if (kWD) gi = gi + wd * p[i];
    if (kMomentum) {
      T bi = b[i] * mom;
      bi = bi + gi;
      b[i] = bi;
      gi = kNesterov ? gi + mom * bi : bi;
    }
    p[i] = p[i] + neg_lr * gi;
  }
}
template <typename T>
HG_INLINE void sgd_pick(T* p, const T* g, T* b, int64_t n, T wd, T mom, T neg_lr, bool nest) {
  const bool has_wd = wd != T(0), has_mom = mom != T(0);
#define HG_SGD(WD)                                                              \
  (!has_mom ? sgd_body<T, WD, false, false>(p, g, b, n, wd, mom, neg_lr)      \
   : nest   ? sgd_body<T, WD, true, true>(p, g, b, n, wd, mom, neg_lr)        \
            : sgd_body<T, WD, true, false>(p, g, b, n, wd, mom, neg_lr))
  if (has_wd) HG_SGD(true);
  else HG_SGD(false);
#undef HG_SGD
}
HG_CLONES void sgd_loop(float* p, const float* g, float* b, int64_t n, float wd, float mom,
                        float neg_lr, bool nest) {
  sgd_pick(p, g, b, n, wd, mom, neg_lr, nest);
}
HG_CLONES void sgd_loop(double* p, const double* g, double* b, int64_t n, double wd,
                        double mom, double neg_lr, bool nest) {
  sgd_pick(p, g, b, n, wd, mom, neg_lr, nest);
}

// --------------------------------------------------------------------------- optimizers
// handgrad/optim/rules.py, one element at a time, in one pass over p, g and the state:
//   SGD:  g += wd p;  b = momentum b + g;  g = nesterov ? g + momentum b : b;  p -= lr g
//   Adam: p *= 1 - lr wd (AdamW) or g += wd p (Adam);  m = lerp(m, g, 1 - beta1);
//         v = beta2 v + (1 - beta2) g^2;  p += step_size m / (sqrt(v) / bc2 + eps)
// with step_size = -lr / (1 - beta1^t) and bc2 = sqrt(1 - beta2^t), given per parameter.
// Arithmetic in the parameter's type, as ATen's kernels do it.
struct OptArgs {
  int64_t kind = kNoUpdate;
  double lr = 0, weight_decay = 0, momentum = 0, beta1 = 0, beta2 = 0, eps = 0;
  bool nesterov = false, decoupled = false;
};

void update(Tensor& p, const Tensor& g, const OptTensor& s1, const OptTensor& s2,
            double step_size, double bc2, const OptArgs& o) {
  if (!p.is_contiguous() || !g.is_contiguous() || p.sizes() != g.sizes()) {
    throw std::invalid_argument("fused update: parameter and gradient differ in layout");
  }
  AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "fused_update", [&] {
    using T = scalar_t;
    T* pp = p.mutable_data_ptr<T>();
    const T* pg = g.const_data_ptr<T>();
    T* a = s1 ? s1->mutable_data_ptr<T>() : nullptr;  // momentum buffer, or Adam's m
    T* v = s2 ? s2->mutable_data_ptr<T>() : nullptr;  // Adam's v
    if (o.kind == kSGD) {
      if (o.momentum != 0.0 && a == nullptr) throw std::invalid_argument("no momentum buffer");
      at::parallel_for(0, p.numel(), kGrain, [&](int64_t b, int64_t e) {
        sgd_loop(pp + b, pg + b, a ? a + b : nullptr, e - b, T(o.weight_decay), T(o.momentum),
                 T(-o.lr), o.nesterov);
      });
      return;
    }
    if (a == nullptr || v == nullptr) throw std::invalid_argument("no Adam state");
    const AdamK k{1.0 - o.lr * o.weight_decay, o.weight_decay, 1.0 - o.beta1, o.beta2,
                  1.0 - o.beta2, bc2, o.eps, step_size};
    at::parallel_for(0, p.numel(), kGrain, [&](int64_t b, int64_t e) {
      adam_loop(pp + b, pg + b, a + b, v + b, e - b, k, o.weight_decay != 0.0, o.decoupled);
    });
  });
}

// ------------------------------------------------------------------------------ the plan
struct Layer {
  int64_t kind;
  ActParams act;         // kActivation
  double p = 0;          // kDropout: drop probability
  double eps = 0, momentum = 0;  // kBatchNorm
  bool update = false;
};

std::vector<Layer> parse(const std::vector<int64_t>& kinds,
                         const std::vector<std::vector<double>>& fparams) {
  if (kinds.size() != fparams.size() || kinds.empty()) {
    throw std::invalid_argument("mlp_step: kinds and parameters differ in length");
  }
  std::vector<Layer> layers(kinds.size());
  for (size_t k = 0; k < kinds.size(); ++k) {
    Layer& l = layers[k];
    const std::vector<double>& f = fparams[k];
    l.kind = kinds[k];
    if (l.kind == kActivation) {
      l.act.code = static_cast<int64_t>(f.at(0));
      l.act.leak = f.at(1);
      l.act.sub = f.at(2);
      l.act.maxv = f.at(3);
      l.act.has_maxv = f.at(4) != 0.0;
    } else if (l.kind == kDropout) {
      l.p = f.at(0);
    } else if (l.kind == kBatchNorm) {
      l.eps = f.at(0);
      l.momentum = f.at(1);
      l.update = f.at(2) != 0.0;
    }
  }
  return layers;
}

// The number of outputs of the network, from its last Linear (the others keep the width).
int64_t out_width(const std::vector<Layer>& layers, const std::vector<OptTensor>& tensors,
                  int64_t in_width) {
  int64_t width = in_width;
  for (size_t k = 0; k < layers.size(); ++k) {
    if (layers[k].kind == kLinear) {
      const Tensor& w = *tensors.at(kSlots * k);
      if (w.size(0) != width) {
        throw std::invalid_argument("mlp_step: layer " + std::to_string(k) + " expects " +
                                    std::to_string(w.size(0)) + " inputs");
      }
      width = w.size(1);
    }
  }
  return width;
}

struct Forward {
  std::vector<Tensor> acts;        // acts[k]: layer k's input; acts[L]: the output
  std::vector<NormCache> norms;    // per layer (batch norm only)
  std::vector<Tensor> keeps;       // per layer (dropout only): the bool mask
};

Forward forward(const Tensor& x, const std::vector<Layer>& layers,
                const std::vector<OptTensor>& tensors, bool training) {
  const size_t L = layers.size();
  Forward f;
  f.acts.reserve(L + 1);
  f.acts.push_back(x);  // (N, in)
  f.norms.resize(L);
  f.keeps.resize(L);
  for (size_t k = 0; k < L; ++k) {
    const Layer& l = layers[k];
    const Tensor& h = f.acts[k];
    const OptTensor* t = &tensors[kSlots * k];
    // A fresh output of the layer below, which nothing else reads.
    const bool fresh = k > 0 && layers[k - 1].kind != kActivation && !h.is_same(x);
    Tensor out;
    if (l.kind == kLinear) {
      out = t[1] ? at::addmm(*t[1], h, *t[0]) : at::mm(h, *t[0]);  // (N, out_k)
    } else if (l.kind == kActivation) {
      if (l.act.code == kReLU) {
        out = fresh ? h.clamp_min_(0) : h.clamp_min(0);
      } else {
        out = fresh && from_output(l.act.code) ? h : at::empty_like(h);
        activation_forward(h.contiguous(), out, l.act);
      }
    } else if (l.kind == kDropout) {
      if (!training) {
        out = h;
      } else {
        f.keeps[k] = t[0]->ge(l.p);  // keep = u >= p
        out = l.p == 1.0 ? at::zeros_like(h) : h.mul(f.keeps[k]).mul_(1.0 / (1.0 - l.p));
      }
    } else {
      out = batchnorm_forward(h, t[0], t[1], t[2], t[3], training, training && l.update,
                              l.momentum, l.eps, training ? &f.norms[k] : nullptr);
    }
    f.acts.push_back(out);
  }
  return f;
}

// Inference: the network's output for x (no loss, nothing kept, batch norm's running stats).
Tensor mlp_predict(const Tensor& x, const std::vector<int64_t>& kinds,
                   const std::vector<std::vector<double>>& fparams,
                   const std::vector<OptTensor>& tensors) {
  c10::AutoGradMode no_autograd(false);
  const std::vector<Layer> layers = parse(kinds, fparams);
  if (x.dim() != 2) throw std::invalid_argument("mlp_predict: expected input (N, features)");
  out_width(layers, tensors, x.size(1));
  return forward(x, layers, tensors, false).acts.back();
}

// Rows from which dW is computed as (d^T @ h)^T plus a copy: for tall inputs MKL runs the
// (out, in)-shaped product about 15% faster than the (in, out)-shaped one, and the copy of
// dW is negligible next to it; for small batches the copy costs more than it saves.
constexpr int64_t kTall = 4096;

// Training step. Layer k is kinds[k] with its numbers fparams[k] and its tensors
// tensors[4k .. 4k+3]: Linear (W, b), BatchNorm1d (gamma, beta, running_mean, running_var),
// Dropout (u: uniform draws, the layer's random stream), activations (none).
// Returns {preds, loss, dx (undefined unless need_dx), g(4k), g(4k+1), ...}: each layer's two
// parameter gradients (undefined where it has none, and all undefined with an update).
//
// The update (opt_kind SGD or Adam, numbers in opt_args) runs on every parameter right after
// its gradient: states1/states2 hold each parameter's buffers (per parameter slot 2k, 2k+1),
// grad_bufs a buffer for its gradient, step_sizes/bc2s Adam's bias corrections. Plain SGD on a
// weight (fold_sgd) is one GEMM, W <- (1 - lr wd) W - lr h^T d: no gradient written at all.
// A layer's update comes after the gradient it passes back (d @ W^T), which needs the weights
// from before the step.
std::vector<Tensor> mlp_step(const Tensor& x, const Tensor& target,
                             const std::vector<int64_t>& kinds,
                             const std::vector<std::vector<double>>& fparams,
                             const std::vector<OptTensor>& tensors, int64_t loss_kind,
                             double label_smoothing, bool need_dx, const OptTensor& dx_out,
                             const OptTensor& loss_out, int64_t opt_kind,
                             const std::vector<double>& opt_args,
                             const std::vector<OptTensor>& states1,
                             const std::vector<OptTensor>& states2,
                             const std::vector<OptTensor>& grad_bufs,
                             const std::vector<double>& step_sizes,
                             const std::vector<double>& bc2s, bool fold_sgd) {
  c10::AutoGradMode no_autograd(false);  // hand-written gradients: no graph is ever recorded
  const std::vector<Layer> layers = parse(kinds, fparams);
  const size_t L = layers.size();
  if (tensors.size() != kSlots * L) throw std::invalid_argument("mlp_step: tensors");
  if (x.dim() != 2) throw std::invalid_argument("mlp_step: expected input (N, features)");
  const int64_t n = x.size(0), classes = out_width(layers, tensors, x.size(1));
  // Refuse bad targets before the forward pass changes any running statistics.
  if (loss_kind == kCrossEntropy) {
    if (target.dim() != 1 || target.size(0) != n || target.scalar_type() != at::kLong) {
      throw std::invalid_argument("mlp_step: expected (N,) int64 labels");
    }
    if (n > 0) {
      const auto [lo, hi] = target.aminmax();
      if (lo.item<int64_t>() < 0 || hi.item<int64_t>() >= classes) {
        throw std::out_of_range("label out of range");
      }
    }
  } else if (target.numel() != n * classes) {
    throw std::invalid_argument("mlp_step: predictions and targets differ in size");
  }
  OptArgs o;
  o.kind = opt_kind;
  if (opt_kind != kNoUpdate) {
    o.lr = opt_args.at(0);
    o.weight_decay = opt_args.at(1);
    o.momentum = opt_args.at(2);
    o.nesterov = opt_args.at(3) != 0.0;
    o.beta1 = opt_args.at(4);
    o.beta2 = opt_args.at(5);
    o.eps = opt_args.at(6);
    o.decoupled = opt_args.at(7) != 0.0;
  }
  Forward f = forward(x, layers, tensors, true);
  std::vector<Tensor>& acts = f.acts;
  const Tensor preds = acts[L];  // (N, C)

  // ---- loss and d = dL/dpreds
  Tensor loss, d;
  if (loss_kind == kCrossEntropy) {
    const int64_t c = preds.size(1);
    if (preds.numel() <= kSmall && preds.is_contiguous() && target.is_contiguous()) {
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
      loss = at::nll_loss(logp, target);        // mean of -log p[n, y_n]
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
    Tensor diff = preds.reshape(target.sizes()).sub(target);  // target's shape
    loss = diff.square().mean();
    d = diff.mul_(2.0 / static_cast<double>(diff.numel())).reshape(preds.sizes());
  }

  // ---- backward, last layer first
  std::vector<Tensor> out(3 + 2 * L);
  out[0] = preds;
  out[1] = loss;
  size_t first_param = L;  // below the first layer with parameters, no gradient is needed
  for (size_t k = 0; k < L && first_param == L; ++k) {
    if (tensors[kSlots * k] && (layers[k].kind == kLinear || layers[k].kind == kBatchNorm)) {
      first_param = k;
    }
  }
  auto apply = [&](size_t slot, Tensor& p, const Tensor& g) {
    update(p, g, states1.at(slot), states2.at(slot), step_sizes.at(slot), bc2s.at(slot), o);
  };
  auto grad_into = [&](size_t slot, const Tensor& like) -> Tensor {
    const OptTensor& buf = grad_bufs.at(slot);
    return buf && buf->sizes() == like.sizes() ? *buf : at::empty_like(like);
  };
  Tensor pending_db;  // a bias gradient computed with the activation's backward above it
  for (size_t k = L; k-- > 0;) {
    const Layer& l = layers[k];
    const OptTensor* t = &tensors[kSlots * k];
    const bool below = k > first_param || need_dx;  // does anything need d at layer k's input
    if (l.kind == kActivation) {
      if (!below) break;
      const Tensor& h = acts[k + 1];  // output
      const Tensor& xin = acts[k];    // input (the same tensor after an in-place forward)
      // The bias of the Linear below is summed in this same pass when the sizes are small.
      const bool fuse_db = k > 0 && layers[k - 1].kind == kLinear && tensors[kSlots * (k - 1) + 1] &&
                           d.numel() <= kSmall;
      if (!d.is_contiguous()) d = d.contiguous();
      Tensor db;
      if (fuse_db) db = at::empty({d.size(1)}, d.options());
      if (l.act.code == kReLU && !fuse_db && d.numel() > kSmall) {
        at::threshold_backward_out(d, d, h, 0);  // d *= (out > 0), in place, multi-threaded
      } else if (l.act.code == kReLU) {
        const Tensor hc = h.contiguous();
        AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "relu_bias", [&] {
          relu_bias(d.mutable_data_ptr<scalar_t>(), hc.const_data_ptr<scalar_t>(),
                    fuse_db ? db.mutable_data_ptr<scalar_t>() : nullptr, d.size(0),
                    d.numel() / std::max<int64_t>(d.size(0), 1));
        });
      } else {
        activation_backward(d, from_output(l.act.code) ? Tensor() : xin.contiguous(),
                            from_output(l.act.code) ? h.contiguous() : Tensor(), l.act,
                            fuse_db ? &db : nullptr);
      }
      pending_db = db;
    } else if (l.kind == kDropout) {
      if (!below) break;
      d = l.p == 1.0 ? at::zeros_like(d) : d.mul(f.keeps[k]).mul_(1.0 / (1.0 - l.p));
      pending_db = Tensor();
    } else if (l.kind == kBatchNorm) {
      Tensor dgamma, dbeta;
      Tensor dx = batchnorm_backward(d, f.norms[k], t[0], below, &dgamma, &dbeta);
      if (t[0]) {
        if (opt_kind != kNoUpdate) {
          Tensor gamma = *t[0], beta = *t[1];
          apply(2 * k, gamma, dgamma);
          apply(2 * k + 1, beta, dbeta);
        } else {
          out[3 + 2 * k] = dgamma;
          out[4 + 2 * k] = dbeta;
        }
      }
      d = dx;
      pending_db = Tensor();
    } else {  // Linear: dW = h^T @ d, db = sum_n d, d <- d @ W^T
      Tensor W = *t[0];
      const Tensor& h = acts[k];  // layer k's input, (N, in_k)
      Tensor db;
      if (t[1]) db = pending_db.defined() ? pending_db : d.sum(0);
      pending_db = Tensor();
      // The gradient for the layer below, from this layer's weights before any update.
      Tensor next;
      if (k == 0 && need_dx && dx_out && dx_out->sizes() == x.sizes() &&
          dx_out->dtype() == x.dtype() && dx_out->is_contiguous() &&
          dx_out->storage().use_count() == 1) {
        Tensor buffer = *dx_out;
        next = at::mm_out(buffer, d, W.t());  // (N, in), no fresh pages to fault in
      } else if (below) {
        next = at::mm(d, W.t());  // (N, in_k)
      }
      if (opt_kind == kSGD && fold_sgd) {
        const double keep = 1.0 - o.lr * o.weight_decay;  // SGD's decay folded into a scale
        W.addmm_(h.t(), d, keep, -o.lr);  // W <- keep W - lr h^T d, in one GEMM
        if (t[1]) {
          Tensor b = *t[1];
          if (keep != 1.0) b.mul_(keep);
          b.add_(db, -o.lr);
        }
      } else if (opt_kind != kNoUpdate) {
        Tensor gw = grad_into(2 * k, W);
        at::mm_out(gw, h.t(), d);  // (in_k, out_k)
        apply(2 * k, W, gw);
        if (t[1]) {
          Tensor b = *t[1];
          apply(2 * k + 1, b, db);
        }
      } else {
        out[3 + 2 * k] = n >= kTall ? at::mm(d.t(), h).t().contiguous()  // (in_k, out_k)
                                    : at::mm(h.t(), d);
        if (t[1]) out[4 + 2 * k] = db;
      }
      d = next;
    }
    acts[k + 1] = Tensor();  // free each activation as soon as its last use is done
    if (!d.defined()) break;
  }
  if (need_dx) out[2] = d;  // (N, in)
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "handgrad fast path: one fused training step of a multi-layer perceptron";
  m.def("mlp_step", &mlp_step, "forward + loss + backward (+ optimizer update) of an MLP",
        pybind11::arg("x"), pybind11::arg("target"), pybind11::arg("kinds"),
        pybind11::arg("fparams"), pybind11::arg("tensors"), pybind11::arg("loss_kind"),
        pybind11::arg("label_smoothing"), pybind11::arg("need_dx"), pybind11::arg("dx_out"),
        pybind11::arg("loss_out"), pybind11::arg("opt_kind"), pybind11::arg("opt_args"),
        pybind11::arg("states1"), pybind11::arg("states2"), pybind11::arg("grad_bufs"),
        pybind11::arg("step_sizes"), pybind11::arg("bc2s"), pybind11::arg("fold_sgd"));
  m.def("mlp_predict", &mlp_predict, "forward pass of an MLP (evaluation)", pybind11::arg("x"),
        pybind11::arg("kinds"), pybind11::arg("fparams"), pybind11::arg("tensors"));
}

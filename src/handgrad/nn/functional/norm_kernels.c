/* Training-mode batch norm (optionally followed by a ReLU, or by the addition of a residual r
   and a ReLU) over x (N, C, L), float32, written out by hand: the formulas of
   handgrad.nn.functional.norm, one channel at a time.

   Forward, per channel c (its N planes of L values, strided by C L):
       mean = sum(x) / M,  var = sum((x - mean)^2) / M   (M = N L; two passes, no cancellation)
       y = x * scale + shift, scale = gamma / sqrt(var + eps), shift = beta - mean * scale
       (then y = max(y, 0) with the ReLU; y = max(y + r, 0) with the residual)
   Backward, with g = dy (or dy * [y > 0] behind the ReLU) and xhat = (x - mean) * inv_std:
       dbeta = sum(g),  dgamma = sum(g * xhat)
       dx = a g + b x + k,  a = gamma inv_std,  b = -a inv_std dgamma / M,
                            k = -a dbeta / M - b mean
       and, with the residual, dr = g (written in the pass that sums g).
   Why by hand: a channel's values (M floats: 400 KB for 128 images of 28x28) fit in the L2
   cache, so the second and third passes over a channel read the cache, not memory: each tensor
   is read from memory once and written once. ATen's batch norm plus a separate ReLU (and its
   backward mask) pass over memory several times more. Sums are accumulated in double.

   Threads (PyTorch's OpenMP team, see run_split) split the channels. Built with the system's C
   compiler on first use (handgrad.nn.functional.norm_fast). */

#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* the memory-bound loops vectorise wider with AVX-512 or AVX2; the CPU's best one runs */
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

typedef struct {
  const float *x, *dy, *y, *gamma, *beta, *res; /* res: the residual r, or NULL */
  float *out, *dx, *dres;                        /* dres: dL/dr, or NULL */
  double *mean, *var, *sums; /* per channel: mean, biased variance; backward: dbeta, dgamma */
  int64_t n, c, l;
  double eps;
  int relu;
  int64_t lo, hi;
} job;

CLONES static void forward(const job *jb) {
  const int64_t n_img = jb->n, l = jb->l, stride = jb->c * jb->l;
  const double m = (double)(n_img * l);
  for (int64_t c = jb->lo; c < jb->hi; c++) {
    const float *xc = jb->x + c * l;
    double s = 0.0;
    for (int64_t n = 0; n < n_img; n++) {
      const float *p = xc + n * stride;
      float part = 0.0f; /* a plane's sum in float (vectorised), the planes' sum in double */
      for (int64_t i = 0; i < l; i++) part += p[i];
      s += part;
    }
    const double mean = s / m;
    const float mf = (float)mean;
    double q = 0.0;
    for (int64_t n = 0; n < n_img; n++) {
      const float *p = xc + n * stride;
      float part = 0.0f;
      for (int64_t i = 0; i < l; i++) part += (p[i] - mf) * (p[i] - mf);
      q += part;
    }
    const double var = q / m, inv_std = 1.0 / sqrt(var + jb->eps);
    const double g = jb->gamma ? jb->gamma[c] : 1.0, b = jb->beta ? jb->beta[c] : 0.0;
    const float scale = (float)(g * inv_std), shift = (float)(b - mean * g * inv_std);
    jb->mean[c] = mean, jb->var[c] = var;
    float *oc = jb->out + c * l;
    for (int64_t n = 0; n < n_img; n++) {
      const float *p = xc + n * stride;
      float *o = oc + n * stride;
      if (jb->res) {
        const float *r = jb->res + c * l + n * stride;
        for (int64_t i = 0; i < l; i++) {
          const float v = p[i] * scale + shift + r[i];
          o[i] = v > 0.0f ? v : 0.0f;
        }
      } else if (jb->relu)
        for (int64_t i = 0; i < l; i++) {
          const float v = p[i] * scale + shift;
          o[i] = v > 0.0f ? v : 0.0f;
        }
      else
        for (int64_t i = 0; i < l; i++) o[i] = p[i] * scale + shift;
    }
  }
}

CLONES static void backward(const job *jb) {
  const int64_t n_img = jb->n, l = jb->l, stride = jb->c * jb->l;
  const double m = (double)(n_img * l);
  for (int64_t c = jb->lo; c < jb->hi; c++) {
    const double mean = jb->mean[c], inv_std = jb->var[c]; /* var holds inv_std here */
    const float mf = (float)mean;
    double sg = 0.0, sgx = 0.0; /* sum(g), sum(g * (x - mean)) */
    for (int64_t n = 0; n < n_img; n++) {
      const int64_t at = c * l + n * stride;
      const float *d = jb->dy + at, *x = jb->x + at, *y = jb->y ? jb->y + at : 0;
      float p1 = 0.0f, p2 = 0.0f;
      if (jb->dres) {
        float *dr = jb->dres + at;
        for (int64_t i = 0; i < l; i++) {
          const float g = y[i] > 0.0f ? d[i] : 0.0f;
          dr[i] = g;
          p1 += g, p2 += g * (x[i] - mf);
        }
      } else if (y)
        for (int64_t i = 0; i < l; i++) {
          const float g = y[i] > 0.0f ? d[i] : 0.0f;
          p1 += g, p2 += g * (x[i] - mf);
        }
      else
        for (int64_t i = 0; i < l; i++) p1 += d[i], p2 += d[i] * (x[i] - mf);
      sg += p1, sgx += p2;
    }
    const double dbeta = sg, dgamma = sgx * inv_std;
    jb->sums[2 * c] = dbeta, jb->sums[2 * c + 1] = dgamma;
    if (!jb->dx) continue;
    const double a = (jb->gamma ? jb->gamma[c] : 1.0) * inv_std;
    const double b = -a * inv_std * dgamma / m, k = -a * dbeta / m - b * mean;
    const float af = (float)a, bf = (float)b, kf = (float)k;
    for (int64_t n = 0; n < n_img; n++) {
      const int64_t at = c * l + n * stride;
      const float *d = jb->dy + at, *x = jb->x + at, *y = jb->y ? jb->y + at : 0;
      float *o = jb->dx + at;
      if (y)
        for (int64_t i = 0; i < l; i++) o[i] = (y[i] > 0.0f ? af * d[i] : 0.0f) + bf * x[i] + kf;
      else
        for (int64_t i = 0; i < l; i++) o[i] = af * d[i] + bf * x[i] + kf;
    }
  }
}

/* Run fn over the channels, split between `threads` threads of the OpenMP team. Built with
   -fopenmp, the library needs libgomp.so.1, which the dynamic loader resolves to the copy
   PyTorch already loaded: its threads, already awake from the convolution before, take the
   channels (threads of our own would fight PyTorch's spinning ones for the same cores). */
static void run_split(void (*fn)(const job *), job base, int threads) {
  if (threads > base.c) threads = (int)base.c;
  if (threads < 1) threads = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    job jb = base;
    jb.lo = base.c * t / nt, jb.hi = base.c * (t + 1) / nt;
    fn(&jb);
  }
#else
  base.lo = 0, base.hi = base.c;
  fn(&base);
#endif
}

/* out = bn(x) (then ReLU; or max(bn(x) + res, 0) where res is not NULL); mean and var
   (biased) per channel out, in double. */
void handgrad_bn_forward(const float *x, const float *gamma, const float *beta, const float *res,
                         float *out, double *mean, double *var, int64_t n, int64_t c, int64_t l,
                         double eps, int relu, int threads) {
  job jb = {0};
  jb.x = x, jb.gamma = gamma, jb.beta = beta, jb.res = res, jb.out = out;
  jb.mean = mean, jb.var = var;
  jb.n = n, jb.c = c, jb.l = l, jb.eps = eps, jb.relu = relu;
  run_split(forward, jb, threads);
}

/* dx (skipped when NULL), dres (the residual's gradient, the masked dy; NULL without a
   residual) and sums[2c] = dbeta, sums[2c + 1] = dgamma; y is the ReLU's output (NULL without
   a ReLU); mean and inv_std per channel, in double. */
void handgrad_bn_backward(const float *dy, const float *y, const float *x, const float *gamma,
                          const double *mean, const double *inv_std, float *dx, float *dres,
                          double *sums, int64_t n, int64_t c, int64_t l, int threads) {
  job jb = {0};
  jb.dy = dy, jb.y = y, jb.x = x, jb.gamma = gamma, jb.dx = dx, jb.dres = dres, jb.sums = sums;
  jb.mean = (double *)mean, jb.var = (double *)inv_std;
  jb.n = n, jb.c = c, jb.l = l;
  run_split(backward, jb, threads);
}

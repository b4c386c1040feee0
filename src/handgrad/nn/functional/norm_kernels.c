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
#include <stdlib.h>

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
  float *cf;                 /* channels-last: per-channel coefficients of the second pass */
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

/* ------------------------------------------------------------------ channels-last (NHWC) */

/* The same batch norm over x as P rows of C channels (channels-last: P = N H W positions), where
   a channel's values are strided by C, so the loops run along the rows and vectorise across the
   channels. Threads split the rows; each sums its rows into its own per-channel partials,
   combined after a barrier. Both passes of the forward's statistics become one: the sums of
   d = x - k and d^2 around k = the channel's first value (close to the mean for a batch norm's
   input, so var = E[d^2] - E[d]^2 cancels little; blocks of BLOCK rows summed in float, the
   blocks in double). A channel no longer fits the cache, so each tensor is read twice. */

#define BLOCK 32

/* per thread: C doubles twice (the sums) and C floats twice (a block's sums) */
typedef struct {
  double *s, *q;
  float *bs, *bq;
} partial;

CLONES static void nhwc_stats(const float *restrict x, const float *restrict k, int64_t r0,
                              int64_t r1, int64_t c, partial pt) {
  double *restrict s = pt.s, *restrict q = pt.q;
  float *restrict bs = pt.bs, *restrict bq = pt.bq;
  for (int64_t j = 0; j < c; j++) s[j] = 0.0, q[j] = 0.0;
  for (int64_t r = r0; r < r1; r += BLOCK) {
    const int64_t re = r + BLOCK < r1 ? r + BLOCK : r1;
    for (int64_t j = 0; j < c; j++) bs[j] = 0.0f, bq[j] = 0.0f;
    for (int64_t i = r; i < re; i++) {
      const float *restrict p = x + i * c;
      for (int64_t j = 0; j < c; j++) {
        const float d = p[j] - k[j];
        bs[j] += d, bq[j] += d * d;
      }
    }
    for (int64_t j = 0; j < c; j++) s[j] += bs[j], q[j] += bq[j];
  }
}

CLONES static void nhwc_apply(const float *restrict x, const float *restrict res,
                              float *restrict out, const float *restrict scale,
                              const float *restrict shift, int relu, int64_t r0, int64_t r1,
                              int64_t c) {
  for (int64_t i = r0; i < r1; i++) {
    const float *restrict p = x + i * c;
    float *restrict o = out + i * c;
    if (res) {
      const float *restrict rr = res + i * c;
      for (int64_t j = 0; j < c; j++) {
        const float v = p[j] * scale[j] + shift[j] + rr[j];
        o[j] = v > 0.0f ? v : 0.0f;
      }
    } else if (relu)
      for (int64_t j = 0; j < c; j++) {
        const float v = p[j] * scale[j] + shift[j];
        o[j] = v > 0.0f ? v : 0.0f;
      }
    else
      for (int64_t j = 0; j < c; j++) o[j] = p[j] * scale[j] + shift[j];
  }
}

/* sums of g and g (x - mean) over rows [r0, r1) (g = dy, or dy masked by y > 0), writing
   dres = g where dres is not NULL */
CLONES static void nhwc_grad_sums(const float *restrict dy, const float *restrict y,
                                  const float *restrict x, const float *restrict mean,
                                  float *restrict dres, int64_t r0, int64_t r1, int64_t c,
                                  partial pt) {
  double *restrict s = pt.s, *restrict q = pt.q;
  float *restrict bs = pt.bs, *restrict bq = pt.bq;
  for (int64_t j = 0; j < c; j++) s[j] = 0.0, q[j] = 0.0;
  for (int64_t r = r0; r < r1; r += BLOCK) {
    const int64_t re = r + BLOCK < r1 ? r + BLOCK : r1;
    for (int64_t j = 0; j < c; j++) bs[j] = 0.0f, bq[j] = 0.0f;
    for (int64_t i = r; i < re; i++) {
      const float *restrict d = dy + i * c, *restrict xi = x + i * c;
      if (y && dres) {
        const float *restrict yi = y + i * c;
        float *restrict dr = dres + i * c;
        for (int64_t j = 0; j < c; j++) {
          const float g = yi[j] > 0.0f ? d[j] : 0.0f;
          dr[j] = g;
          bs[j] += g, bq[j] += g * (xi[j] - mean[j]);
        }
      } else if (y) {
        const float *restrict yi = y + i * c;
        for (int64_t j = 0; j < c; j++) {
          const float g = yi[j] > 0.0f ? d[j] : 0.0f;
          bs[j] += g, bq[j] += g * (xi[j] - mean[j]);
        }
      } else
        for (int64_t j = 0; j < c; j++) bs[j] += d[j], bq[j] += d[j] * (xi[j] - mean[j]);
    }
    for (int64_t j = 0; j < c; j++) s[j] += bs[j], q[j] += bq[j];
  }
}

CLONES static void nhwc_dx(const float *restrict dy, const float *restrict y,
                           const float *restrict x, const float *restrict a,
                           const float *restrict b, const float *restrict k, float *restrict dx,
                           int64_t r0, int64_t r1, int64_t c) {
  for (int64_t i = r0; i < r1; i++) {
    const float *restrict d = dy + i * c, *restrict xi = x + i * c;
    float *restrict o = dx + i * c;
    if (y) {
      const float *restrict yi = y + i * c;
      for (int64_t j = 0; j < c; j++)
        o[j] = (yi[j] > 0.0f ? a[j] * d[j] : 0.0f) + b[j] * xi[j] + k[j];
    } else
      for (int64_t j = 0; j < c; j++) o[j] = a[j] * d[j] + b[j] * xi[j] + k[j];
  }
}

/* this thread's number t and share [r0, r1) of the p rows; returns the team's size */
static int nhwc_rows(int64_t p, int *t, int64_t *r0, int64_t *r1) {
#ifdef _OPENMP
  const int nt = omp_get_num_threads();
  *t = omp_get_thread_num();
#else
  const int nt = 1;
  *t = 0;
#endif
  *r0 = p * *t / nt, *r1 = p * (*t + 1) / nt;
  return nt;
}

static partial nhwc_partial(double *scratch, int64_t c, int t) {
  partial pt;
  pt.s = scratch + 3 * t * c, pt.q = pt.s + c, pt.bs = (float *)(pt.q + c), pt.bq = pt.bs + c;
  return pt;
}

typedef void (*nhwc_sums_fn)(const job *, int64_t r0, int64_t r1, partial);
typedef void (*nhwc_coef_fn)(job *, int64_t j, double s, double q);
typedef void (*nhwc_apply_fn)(const job *, int64_t r0, int64_t r1);

/* The two passes of a channels-last batch norm over jb->n rows of jb->c channels, the rows split
   between the threads: each sums its rows into its own partials; after a barrier one thread
   adds them up and turns each channel's two sums into its coefficients (coef); then every
   thread applies them to its rows. Returns 1 if out of memory (nothing written), else 0. */
static int nhwc_run(job *jb, int threads, nhwc_sums_fn sums, nhwc_coef_fn coef,
                    nhwc_apply_fn apply) {
  const int64_t p = jb->n, c = jb->c;
  if (threads > p) threads = (int)p;
  if (threads < 1) threads = 1;
  /* per thread: C doubles twice (the sums), C floats twice (a block's sums) */
  double *scratch = (double *)malloc((size_t)(3 * threads) * (size_t)c * sizeof(double));
  if (!scratch) return 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    int t;
    int64_t r0, r1;
    const int nt = nhwc_rows(p, &t, &r0, &r1);
    sums(jb, r0, r1, nhwc_partial(scratch, c, t));
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
    for (int64_t j = 0; j < c; j++) {
      double s = 0.0, q = 0.0;
      for (int u = 0; u < nt; u++) {
        const partial pu = nhwc_partial(scratch, c, u);
        s += pu.s[j], q += pu.q[j];
      }
      coef(jb, j, s, q);
    } /* the single's implicit barrier: every thread sees the coefficients */
    apply(jb, r0, r1);
  }
  free(scratch);
  return 0;
}

/* forward: sums of x - k around k = x's first row; cf = (scale, shift) */
static void fwd_sums(const job *jb, int64_t r0, int64_t r1, partial pt) {
  nhwc_stats(jb->x, jb->x, r0, r1, jb->c, pt);
}

static void fwd_coef(job *jb, int64_t j, double s, double q) {
  const double m = (double)jb->n, dm = s / m, v = q / m - dm * dm;
  jb->mean[j] = jb->x[j] + dm, jb->var[j] = v > 0.0 ? v : 0.0;
  const double inv_std = 1.0 / sqrt(jb->var[j] + jb->eps);
  const double g = jb->gamma ? jb->gamma[j] : 1.0, b = jb->beta ? jb->beta[j] : 0.0;
  jb->cf[j] = (float)(g * inv_std), jb->cf[jb->c + j] = (float)(b - jb->mean[j] * g * inv_std);
}

static void fwd_apply(const job *jb, int64_t r0, int64_t r1) {
  nhwc_apply(jb->x, jb->res, jb->out, jb->cf, jb->cf + jb->c, jb->relu, r0, r1, jb->c);
}

/* backward: cf = (mean as float, then a, b, k of dx = a g + b x + k) */
static void bwd_sums(const job *jb, int64_t r0, int64_t r1, partial pt) {
  nhwc_grad_sums(jb->dy, jb->y, jb->x, jb->cf, jb->dres, r0, r1, jb->c, pt);
}

static void bwd_coef(job *jb, int64_t j, double sg, double sgx) {
  const double m = (double)jb->n, inv_std = jb->var[j]; /* var holds inv_std here */
  const double dgamma = sgx * inv_std;
  jb->sums[2 * j] = sg, jb->sums[2 * j + 1] = dgamma;
  const double a = (jb->gamma ? jb->gamma[j] : 1.0) * inv_std;
  const double b = -a * inv_std * dgamma / m, k = -a * sg / m - b * jb->mean[j];
  float *cf = jb->cf + jb->c;
  cf[j] = (float)a, cf[jb->c + j] = (float)b, cf[2 * jb->c + j] = (float)k;
}

static void bwd_apply(const job *jb, int64_t r0, int64_t r1) {
  const int64_t c = jb->c;
  const float *a = jb->cf + c;
  if (jb->dx) nhwc_dx(jb->dy, jb->y, jb->x, a, a + c, a + 2 * c, jb->dx, r0, r1, c);
}

/* handgrad_bn_forward for channels-last x (p rows of c); returns 0, or 1 if out of memory */
int handgrad_bn_forward_nhwc(const float *x, const float *gamma, const float *beta,
                             const float *res, float *out, double *mean, double *var,
                             int64_t p, int64_t c, double eps, int relu, int threads) {
  job jb = {0};
  jb.x = x, jb.gamma = gamma, jb.beta = beta, jb.res = res, jb.out = out;
  jb.mean = mean, jb.var = var, jb.n = p, jb.c = c, jb.eps = eps, jb.relu = relu;
  jb.cf = (float *)malloc((size_t)(2 * c) * sizeof(float));
  if (!jb.cf) return 1;
  const int failed = nhwc_run(&jb, threads, fwd_sums, fwd_coef, fwd_apply);
  free(jb.cf);
  return failed;
}

/* handgrad_bn_backward for channels-last tensors (p rows of c); returns 0, or 1 if out of
   memory */
int handgrad_bn_backward_nhwc(const float *dy, const float *y, const float *x,
                              const float *gamma, const double *mean, const double *inv_std,
                              float *dx, float *dres, double *sums, int64_t p, int64_t c,
                              int threads) {
  job jb = {0};
  jb.dy = dy, jb.y = y, jb.x = x, jb.gamma = gamma, jb.dx = dx, jb.dres = dres, jb.sums = sums;
  jb.mean = (double *)mean, jb.var = (double *)inv_std, jb.n = p, jb.c = c;
  jb.cf = (float *)malloc((size_t)(4 * c) * sizeof(float));
  if (!jb.cf) return 1;
  for (int64_t j = 0; j < c; j++) jb.cf[j] = (float)mean[j];
  const int failed = nhwc_run(&jb, threads, bwd_sums, bwd_coef, bwd_apply);
  free(jb.cf);
  return failed;
}

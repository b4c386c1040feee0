/* The weight gradient of a 3x3, stride-1 convolution (float32, NCHW), written out by hand.

   dW[o, c, i, j] = sum over n, a, b of dy[n, o, a, b] * xpad[n, c, a + i, b + j]

   Both operands are first copied onto one "padded grid" per channel: every image becomes an
   Hp x Wp plane (Hp = H + 2 ph, Wp = W + 2 pw), the images follow each other, and

       xg[c][p]  = xpad[n, c, r, s]                at p = n Hp Wp + r Wp + s,
       dyg[o][p] = dy[n, o, a, b], zero outside    at p = n Hp Wp + a Wp + b  (a < Ho, b < Wo).

   On that grid the tap (i, j) is a constant shift, xpad[n, c, a + i, b + j] = xg[c][p + i Wp + j],
   so dW[o, c, i, j] = sum_p dyg[o][p] xg[c][p + i Wp + j]: nine dot products of two long
   contiguous rows, which vectorise along p with no gather and no index arithmetic. Two output
   channels share each load of x (18 accumulators in registers; three, 27, measured slower). The grid's extra columns and
   rows carry dy = 0, so they add nothing (their share of the work is (Hp Wp - Ho Wo) / Hp Wp).

   Work is split over output channels (each thread owns whole rows of dW: no reduction), and p
   is walked in chunks whose x rows stay in the L2 cache while every output channel reads them.
   Built with the system's C compiler on first use (handgrad.nn.functional.conv_fast); the
   inner loop is compiled for AVX-512, AVX2 and plain code, and the CPU's best one runs. */

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define V 16 /* grid rows are padded to a multiple of the widest vector, 16 floats */

typedef struct {
  const float *x, *dy;
  float *xg, *dyg, *dw;
  int64_t n, c, h, w, o, ph, pw, hp, wp, ho, wo, grid, chunk;
  int64_t lo, hi; /* this thread's range (channels to copy, or output channels to compute) */
} job;

/* Copy x's channels [lo, hi) and dy's output channels [lo2, hi2) onto their grids. */
static void *copy_grids(void *arg) {
  const job *jb = (const job *)arg;
  const int64_t hp = jb->hp, wp = jb->wp, g = jb->grid;
  for (int64_t ch = jb->lo; ch < jb->hi; ch++) {
    if (ch < jb->c) { /* an input channel */
      float *dst = jb->xg + ch * g;
      memset(dst, 0, (size_t)g * sizeof(float));
      for (int64_t n = 0; n < jb->n; n++) {
        const float *src = jb->x + (n * jb->c + ch) * jb->h * jb->w;
        float *img = dst + n * hp * wp;
        for (int64_t r = 0; r < jb->h; r++)
          memcpy(img + (r + jb->ph) * wp + jb->pw, src + r * jb->w, (size_t)jb->w * sizeof(float));
      }
    } else { /* an output channel of dy */
      const int64_t oc = ch - jb->c;
      float *dst = jb->dyg + oc * g;
      memset(dst, 0, (size_t)g * sizeof(float));
      for (int64_t n = 0; n < jb->n; n++) {
        const float *src = jb->dy + (n * jb->o + oc) * jb->ho * jb->wo;
        float *img = dst + n * hp * wp;
        for (int64_t a = 0; a < jb->ho; a++)
          memcpy(img + a * wp, src + a * jb->wo, (size_t)jb->wo * sizeof(float));
      }
    }
  }
  return NULL;
}

/* dW rows [lo, hi): the nine shifted dot products, OB output channels at a time, so that each
   load of x feeds OB multiply-adds (AVX-512's 32 registers hold 2 x 9 accumulators; AVX2's 16
   hold 9). The macro defines it once per instruction set; wgrad_thread runs the best one the
   CPU has. */
#define WGRAD_ROWS(NAME, ATTR, LANES, OB)                                                     \
  typedef float NAME##_v __attribute__((vector_size(4 * LANES)));                           \
  typedef float NAME##_u __attribute__((vector_size(4 * LANES), aligned(4)));               \
  ATTR static void NAME(const job *jb) {                                                    \
    const int64_t wp = jb->wp, c_n = jb->c, total = jb->n * jb->hp * jb->wp;               \
    const int64_t off[9] = {0, 1, 2, wp, wp + 1, wp + 2, 2 * wp, 2 * wp + 1, 2 * wp + 2};  \
    for (int64_t start = 0; start < total; start += jb->chunk) {                            \
      const int64_t end = start + jb->chunk < total ? start + jb->chunk : total;            \
      for (int64_t o = jb->lo; o < jb->hi; o += OB) {                                       \
        const float *d[OB];                                                                 \
        int64_t rows = 0; /* output channels in this block: OB, or fewer at the end */     \
        for (int b = 0; b < OB; b++) {                                                      \
          rows += o + b < jb->hi;                                                           \
          d[b] = jb->dyg + (o + b < jb->hi ? o + b : o) * jb->grid;                         \
        }                                                                                   \
        for (int64_t c = 0; c < c_n; c++) {                                                 \
          const float *xc = jb->xg + c * jb->grid;                                          \
          NAME##_v acc[OB][9];                                                              \
          for (int b = 0; b < OB; b++)                                                      \
            for (int t = 0; t < 9; t++) acc[b][t] = (NAME##_v){0};                          \
          for (int64_t p = start; p < end; p += LANES) { /* rows are padded to V */        \
            NAME##_v y[OB];                                                                 \
            for (int b = 0; b < OB; b++) y[b] = *(const NAME##_u *)(d[b] + p);              \
            for (int t = 0; t < 9; t++) {                                                   \
              const NAME##_v xv = *(const NAME##_u *)(xc + p + off[t]);                     \
              for (int b = 0; b < OB; b++) acc[b][t] += y[b] * xv;                          \
            }                                                                               \
          }                                                                                 \
          for (int b = 0; b < rows; b++)                                                    \
            for (int t = 0; t < 9; t++) {                                                   \
              float sum = 0.0f;                                                             \
              for (int k = 0; k < LANES; k++) sum += acc[b][t][k];                          \
              jb->dw[((o + b) * c_n + c) * 9 + t] += sum;                                   \
            }                                                                               \
        }                                                                                   \
      }                                                                                     \
    }                                                                                       \
  }

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86 1
WGRAD_ROWS(rows_avx512, __attribute__((target("avx512f,fma"))), 16, 2)
WGRAD_ROWS(rows_avx2, __attribute__((target("avx2,fma"))), 8, 1)
#endif
WGRAD_ROWS(rows_plain, , 4, 1)

static void *wgrad_thread(void *arg) {
  const job *jb = (const job *)arg;
#ifdef HAVE_X86
  if (__builtin_cpu_supports("avx512f")) return rows_avx512(jb), NULL;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return rows_avx2(jb), NULL;
#endif
  rows_plain(jb);
  return NULL;
}

/* Run fn on `threads` jobs splitting [0, count) (in steps of `step`); the caller runs the last. */
static void run_split(void *(*fn)(void *), job base, int64_t count, int64_t step, int threads) {
  job jobs[64];
  pthread_t ids[64];
  if (threads < 1) threads = 1;
  if (threads > 64) threads = 64;
  const int64_t units = (count + step - 1) / step;
  if (threads > units) threads = (int)units;
  int started = 0;
  for (int t = 0; t < threads; t++) {
    jobs[t] = base;
    jobs[t].lo = (units * t / threads) * step;
    jobs[t].hi = (units * (t + 1) / threads) * step;
    if (jobs[t].hi > count) jobs[t].hi = count;
  }
  for (int t = 0; t + 1 < threads; t++)
    if (pthread_create(&ids[t], NULL, fn, &jobs[t]) == 0) started = t + 1;
    else break;
  for (int t = started; t < threads; t++) fn(&jobs[t]); /* what no thread took, run here */
  for (int t = 0; t < started; t++) pthread_join(ids[t], NULL);
}

/* dw (O, C, 3, 3) = the weight gradient; xg and dyg are workspaces of c * grid and o * grid
   floats, grid = round_up(n hp wp + 2 wp + 2, 16) + 16 (the last shifted loads stay inside). */
void handgrad_conv3x3_wgrad(const float *x, const float *dy, float *dw, float *xg, float *dyg,
                            int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, int64_t ph,
                            int64_t pw, int64_t grid, int threads) {
  job base = {0};
  base.x = x, base.dy = dy, base.xg = xg, base.dyg = dyg, base.dw = dw;
  base.n = n, base.c = c, base.h = h, base.w = w, base.o = o, base.ph = ph, base.pw = pw;
  base.hp = h + 2 * ph, base.wp = w + 2 * pw;
  base.ho = base.hp - 2, base.wo = base.wp - 2, base.grid = grid;
  /* x rows of one chunk (c * chunk floats) should stay in a 256 KiB share of L2 */
  int64_t chunk = (65536 / (c + 2)) / V * V;
  base.chunk = chunk < 256 ? 256 : chunk;
  memset(dw, 0, (size_t)(o * c * 9) * sizeof(float));
  run_split(copy_grids, base, c + o, 1, threads);
  run_split(wgrad_thread, base, o, 2, threads);
}

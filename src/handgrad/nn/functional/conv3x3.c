/* Gradients of 3x3 convolutions (float32, NCHW, one group), written out by hand: the weight
   gradient at any stride (first), and the input gradient at stride 2 (below, its own header).

   The weight gradient:

       dW[o, c, i, j] = sum over n, a, b of dy[n, o, a, b] * xpad[n, c, a s + i, b s + j]

   It is a matrix product, dW^T[(c, i, j), o] = sum_q X[(c, i, j), q] dyT[q, o], over the
   N Ho Wo output positions q = (n, a, b), with X the im2col columns of x. The columns are never
   built: X[(c, i, j), q] is one float of x at a fixed offset i Wp + j from where q's window
   starts, so the kernel reads it straight from x (copied once onto a zero-padded grid,
   xg[c][n][Hp][Wp]). dy is copied once as dyT[q][o] (o padded with zeros to a multiple of 16)
   so that a vector of 16 (AVX-512) or 8 output channels is one load.

   The inner loop is a matrix-product micro-kernel: per position q it loads V vectors of dyT
   (V LANES output channels), broadcasts the 9 K taps of K input channels, and does 9 K V
   multiply-adds into accumulators that stay in registers for a whole chunk of positions
   (AVX-512: V = 2, K = 1, 18 accumulators and 11 loads per 18 FMAs; one vector of channels,
   V = 1, takes K = 2). Threads (PyTorch's OpenMP team, see run) split the positions, each
   summing into a private dW, added up at the end; chunks of rows keep their slice of x and dy
   in the L2 cache while every block of channels reads it.

   x and dy may also come channels-last (NHWC, flag `nhwc`): dy's rows then already are dyT's
   (read in place when O is a multiple of 16), and with AVX-512 and C a multiple of 8 the tap
   micro-kernels (WGRAD_TAP) read x in place too; otherwise x's grid is channels-last,
   xg[n][Hp][Wp][C] (a copy of rows between zeros; the micro-kernel only sees other strides).

   Built with the system's C compiler on first use (handgrad.nn.functional.conv_fast); the
   micro-kernel is compiled for AVX-512, AVX2 and plain code, and the CPU's best one runs. */

#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <string.h>

#define OPAD 16 /* dyT rows are padded to a multiple of the widest vector, 16 floats */

typedef struct {
  const float *x, *dy;
  float *xg, *dyt, *part;
  int64_t n, c, h, w, o, opad, ph, pw, sh, sw, hp, wp, ho, wo;
  int64_t chunk; /* rows (n, a) per chunk */
  int nhwc;      /* x and dy are channels-last, (N, H, W, C) in memory */
  int64_t cs, ps; /* strides of a channel and of a pixel on x's grid */
  int tap;        /* channels-last, C a multiple of 8, AVX-512: the tap micro-kernels on x */
} job;

/* x onto its padded grid, channel ch (rows of zeros around each image); NCHW x */
static void copy_x(const job *jb, int64_t ch) {
  const int64_t img = jb->hp * jb->wp;
  float *dst = jb->xg + ch * jb->n * img;
  memset(dst, 0, (size_t)(jb->n * img) * sizeof(float));
  for (int64_t n = 0; n < jb->n; n++) {
    const float *src = jb->x + (n * jb->c + ch) * jb->h * jb->w;
    for (int64_t r = 0; r < jb->h; r++)
      memcpy(dst + n * img + (r + jb->ph) * jb->wp + jb->pw, src + r * jb->w,
             (size_t)jb->w * sizeof(float));
  }
}

/* image n of a channels-last x onto its padded grid, channels-last too (xg[n][Hp][Wp][C]):
   zero rows above and below, each row of x one copy between its zero pixels */
static void copy_x_nhwc(const job *jb, int64_t n) {
  const int64_t c_n = jb->c, w = jb->w, wp = jb->wp, row = wp * c_n;
  float *img = jb->xg + n * jb->hp * row;
  const size_t left = (size_t)(jb->pw * c_n), right = (size_t)((wp - w - jb->pw) * c_n);
  memset(img, 0, (size_t)(jb->ph * row) * sizeof(float));
  for (int64_t r = 0; r < jb->h; r++) {
    float *dst = img + (r + jb->ph) * row;
    memset(dst, 0, left * sizeof(float));
    memcpy(dst + left, jb->x + (n * jb->h + r) * w * c_n, (size_t)(w * c_n) * sizeof(float));
    memset(dst + left + w * c_n, 0, right * sizeof(float));
  }
  const int64_t below = (jb->hp - jb->h - jb->ph) * row;
  memset(img + (jb->ph + jb->h) * row, 0, (size_t)below * sizeof(float));
}

/* dy's image n as dyT[q][o], q = (n Ho + a) Wo + b; the padded channels are zero */
static void copy_dy(const job *jb, int64_t n) {
  if (jb->nhwc) { /* each position's O floats are already a row of dyT */
    const int64_t l = jb->ho * jb->wo, opad = jb->opad;
    for (int64_t q = n * l; q < (n + 1) * l; q++) {
      memcpy(jb->dyt + q * opad, jb->dy + q * jb->o, (size_t)jb->o * sizeof(float));
      for (int64_t o = jb->o; o < opad; o++) jb->dyt[q * opad + o] = 0.0f;
    }
    return;
  }
  const int64_t l = jb->ho * jb->wo, opad = jb->opad;
  float *dst = jb->dyt + n * l * opad;
  for (int64_t q = 0; q < l; q++)
    for (int64_t o = jb->o; o < opad; o++) dst[q * opad + o] = 0.0f;
  for (int64_t o = 0; o < jb->o; o++) {
    const float *src = jb->dy + (n * jb->o + o) * l;
    for (int64_t q = 0; q < l; q++) dst[q * opad + o] = src[q];
  }
}

/* part[(c0 + k) 9 + t][o0 ...] += the sums over rows [r0, r1) for V LANES output channels from
   o0 and K input channels from c0. One instance per (instruction set, LANES, V, K). */
#define WGRAD_BLOCK(NAME, ATTR, LANES, V, K)                                                  \
  typedef float NAME##_v __attribute__((vector_size(4 * LANES)));                           \
  ATTR static void NAME(const job *jb, float *part, int64_t o0, int64_t c0, int64_t r0,     \
                        int64_t r1) {                                                       \
    const int64_t wp = jb->wp, wo = jb->wo, opad = jb->opad, sw = jb->sw * jb->ps;         \
    const int64_t cs = jb->cs, ps = jb->ps, rs = wp * ps; /* channel, pixel, row strides */ \
    const int64_t off[9] = {0, ps, 2 * ps, rs, rs + ps, rs + 2 * ps, 2 * rs, 2 * rs + ps,  \
                            2 * rs + 2 * ps};                                               \
    NAME##_v acc[K * 9][V];                                                                 \
    for (int r = 0; r < K * 9; r++)                                                         \
      for (int v = 0; v < V; v++)                                                           \
        acc[r][v] = *(const NAME##_v *)(part + ((c0 * 9 + r) * opad + o0 + v * LANES));     \
    for (int64_t row = r0; row < r1; row++) {                                               \
      const int64_t n = row / jb->ho, a = row - n * jb->ho;                                 \
      const float *xr = jb->xg + c0 * cs + (n * jb->hp + a * jb->sh) * rs;                  \
      const float *dr = jb->dyt + row * wo * opad + o0;                                     \
      for (int64_t b = 0; b < wo; b++) {                                                    \
        NAME##_v d[V];                                                                      \
        for (int v = 0; v < V; v++) d[v] = *(const NAME##_v *)(dr + b * opad + v * LANES);  \
        const float *xb = xr + b * sw;                                                      \
        for (int k = 0; k < K; k++)                                                         \
          for (int t = 0; t < 9; t++) {                                                     \
            const float xs = xb[k * cs + off[t]];                                           \
            for (int v = 0; v < V; v++) acc[k * 9 + t][v] += d[v] * xs;                     \
          }                                                                                 \
      }                                                                                     \
    }                                                                                       \
    for (int r = 0; r < K * 9; r++)                                                         \
      for (int v = 0; v < V; v++)                                                           \
        *(NAME##_v *)(part + ((c0 * 9 + r) * opad + o0 + v * LANES)) = acc[r][v];           \
  }

/* A channels-last x needs no grid: its pixel's channels are contiguous, so the taps go the
   other way round, one tap (i, j) at a time, K consecutive input channels (one or two cache
   lines of x, every float of them used) broadcast against V vectors of dyT, and the padding is
   the rows and columns skipped (where the tap falls outside x). One instance per (instruction
   set, LANES, V, K). */
#define WGRAD_TAP(NAME, ATTR, LANES, V, K)                                                    \
  typedef float NAME##_v __attribute__((vector_size(4 * LANES)));                           \
  ATTR static void NAME(const job *jb, float *part, int64_t o0, int64_t c0, int t,          \
                        int64_t r0, int64_t r1) {                                           \
    const int64_t wo = jb->wo, opad = jb->opad, c_n = jb->c, w = jb->w, sw = jb->sw;       \
    const int64_t i = t / 3, j = t % 3, shift = j - jb->pw; /* x column = b sw + shift */  \
    const int64_t b_lo = shift < 0 ? (-shift + sw - 1) / sw : 0;                            \
    const int64_t last = w - 1 - shift; /* the largest b sw that stays inside x */          \
    const int64_t b_hi = last < 0 ? 0 : (last / sw + 1 < wo ? last / sw + 1 : wo);          \
    NAME##_v acc[K][V];                                                                     \
    for (int k = 0; k < K; k++)                                                             \
      for (int v = 0; v < V; v++)                                                           \
        acc[k][v] = *(const NAME##_v *)(part + (((c0 + k) * 9 + t) * opad + o0 + v * LANES)); \
    for (int64_t row = r0; row < r1; row++) {                                               \
      const int64_t n = row / jb->ho, a = row - n * jb->ho, xrow = a * jb->sh + i - jb->ph; \
      if (xrow < 0 || xrow >= jb->h) continue;                                              \
      const float *xr = jb->x + c0 + (n * jb->h + xrow) * w * c_n;                          \
      const float *dr = jb->dyt + row * wo * opad + o0;                                     \
      for (int64_t b = b_lo; b < b_hi; b++) {                                               \
        NAME##_v d[V];                                                                      \
        for (int v = 0; v < V; v++) d[v] = *(const NAME##_v *)(dr + b * opad + v * LANES);  \
        const float *xb = xr + (b * sw + shift) * c_n;                                      \
        for (int k = 0; k < K; k++) {                                                       \
          const float xs = xb[k];                                                           \
          for (int v = 0; v < V; v++) acc[k][v] += d[v] * xs;                               \
        }                                                                                   \
      }                                                                                     \
    }                                                                                       \
    for (int k = 0; k < K; k++)                                                             \
      for (int v = 0; v < V; v++)                                                           \
        *(NAME##_v *)(part + (((c0 + k) * 9 + t) * opad + o0 + v * LANES)) = acc[k][v];     \
  }

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86 1
WGRAD_BLOCK(avx512_v2k1, __attribute__((target("avx512f,fma"))), 16, 2, 1)
WGRAD_BLOCK(avx512_v1k2, __attribute__((target("avx512f,fma"))), 16, 1, 2)
WGRAD_BLOCK(avx512_v1k1, __attribute__((target("avx512f,fma"))), 16, 1, 1)
WGRAD_BLOCK(avx2_v1k1, __attribute__((target("avx2,fma"))), 8, 1, 1)
WGRAD_TAP(avx512_tap_v2k8, __attribute__((target("avx512f,fma"))), 16, 2, 8)
WGRAD_TAP(avx512_tap_v1k16, __attribute__((target("avx512f,fma"))), 16, 1, 16)
WGRAD_TAP(avx512_tap_v1k8, __attribute__((target("avx512f,fma"))), 16, 1, 8)
#endif
WGRAD_BLOCK(plain_v1k1, , 4, 1, 1)

/* The blocks of (output, input) channels that cover one chunk of rows, with the widest
   micro-kernel each block allows. */
static void chunk_sums(const job *jb, float *part, int64_t r0, int64_t r1) {
  const int64_t opad = jb->opad, c_n = jb->c;
#ifdef HAVE_X86
  if (jb->tap) {
    for (int t = 0; t < 9; t++) {
      int64_t o0 = 0;
      for (; o0 + 32 <= opad; o0 += 32)
        for (int64_t c = 0; c < c_n; c += 8) avx512_tap_v2k8(jb, part, o0, c, t, r0, r1);
      for (; o0 < opad; o0 += 16) {
        int64_t c = 0;
        for (; c + 16 <= c_n; c += 16) avx512_tap_v1k16(jb, part, o0, c, t, r0, r1);
        for (; c < c_n; c += 8) avx512_tap_v1k8(jb, part, o0, c, t, r0, r1);
      }
    }
    return;
  }
  if (__builtin_cpu_supports("avx512f")) {
    int64_t o0 = 0;
    for (; o0 + 32 <= opad; o0 += 32)
      for (int64_t c = 0; c < c_n; c++) avx512_v2k1(jb, part, o0, c, r0, r1);
    for (; o0 < opad; o0 += 16) {
      int64_t c = 0;
      for (; c + 2 <= c_n; c += 2) avx512_v1k2(jb, part, o0, c, r0, r1);
      for (; c < c_n; c++) avx512_v1k1(jb, part, o0, c, r0, r1);
    }
    return;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    for (int64_t o0 = 0; o0 < opad; o0 += 8)
      for (int64_t c = 0; c < c_n; c++) avx2_v1k1(jb, part, o0, c, r0, r1);
    return;
  }
#endif
  for (int64_t o0 = 0; o0 < opad; o0 += 4)
    for (int64_t c = 0; c < c_n; c++) plain_v1k1(jb, part, o0, c, r0, r1);
}

/* Split each loop between `threads` threads of the OpenMP team. Built with -fopenmp, the
   library needs libgomp.so.1, which the dynamic loader resolves to the copy PyTorch already
   loaded: its threads, still awake from the last convolution, take the work (threads of our
   own would fight PyTorch's spinning ones for the same cores). Without OpenMP: one thread. */
static void run(const job *jb, int threads) {
  const int64_t rows = jb->n * jb->ho, per = jb->c * 9 * jb->opad;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
#ifdef _OPENMP
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t t = 0, nt = 1;
#endif
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
    for (int64_t i = 0; i < (jb->tap ? 0 : jb->nhwc ? jb->n : jb->c); i++)
      jb->nhwc ? copy_x_nhwc(jb, i) : copy_x(jb, i);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t n = 0; n < jb->n; n++)
      if (jb->dyt != jb->dy) copy_dy(jb, n);
    /* this thread's rows, in chunks; its private sums */
    const int64_t lo = rows * t / nt, hi = rows * (t + 1) / nt;
    for (int64_t r = lo; r < hi; r += jb->chunk)
      chunk_sums(jb, jb->part + t * per, r, r + jb->chunk < hi ? r + jb->chunk : hi);
  }
}

static int64_t round16(int64_t n) { return (n + OPAD - 1) / OPAD * OPAD; }

static void wgrad_layout(job *jb, int64_t n, int64_t c, int64_t h, int64_t w, int64_t o,
                         int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  jb->n = n, jb->c = c, jb->h = h, jb->w = w, jb->o = o, jb->opad = round16(o);
  jb->sh = sh, jb->sw = sw, jb->ph = ph, jb->pw = pw, jb->hp = h + 2 * ph, jb->wp = w + 2 * pw;
  jb->ho = (jb->hp - 3) / sh + 1, jb->wo = (jb->wp - 3) / sw + 1;
}

/* Floats of workspace handgrad_conv3x3_wgrad needs: x's grid (C N Hp Wp), dyT (N Ho Wo opad)
   and a partial dW per thread (C 9 opad), each part starting on a 64-byte boundary. */
int64_t handgrad_conv3x3_wgrad_space(int64_t n, int64_t c, int64_t h, int64_t w, int64_t o,
                                     int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                     int threads) {
  job jb = {0};
  wgrad_layout(&jb, n, c, h, w, o, sh, sw, ph, pw);
  return round16(c * n * jb.hp * jb.wp) + round16(n * jb.ho * jb.wo * jb.opad) +
         (threads < 1 ? 1 : threads) * c * 9 * jb.opad;
}

/* dw (O, C, 3, 3) = the weight gradient of a 3x3 convolution with stride (sh, sw) and padding
   (ph, pw) of x (N, C, H, W), dy (N, O, Ho, Wo), both channels-last in memory with `nhwc`;
   space: handgrad_conv3x3_wgrad_space floats, 64-byte aligned (the vector loads of dyT and of
   the partial sums need it; a channels-last dy is read in place when O is a multiple of 16
   and dy is 64-byte aligned). */
void handgrad_conv3x3_wgrad(const float *x, const float *dy, float *dw, float *space, int64_t n,
                            int64_t c, int64_t h, int64_t w, int64_t o, int64_t sh, int64_t sw,
                            int64_t ph, int64_t pw, int nhwc, int threads) {
  job jb = {0};
  wgrad_layout(&jb, n, c, h, w, o, sh, sw, ph, pw);
  jb.x = x, jb.dy = dy, jb.xg = space, jb.nhwc = nhwc;
  jb.cs = nhwc ? 1 : n * jb.hp * jb.wp, jb.ps = nhwc ? c : 1;
#ifdef HAVE_X86
  jb.tap = nhwc && c % 8 == 0 && __builtin_cpu_supports("avx512f");
#endif
  jb.dyt = jb.xg + round16(c * n * jb.hp * jb.wp);
  jb.part = jb.dyt + round16(n * jb.ho * jb.wo * jb.opad);
  if (nhwc && o == jb.opad && (uintptr_t)dy % 64 == 0) jb.dyt = (float *)dy; /* no copy */
  float *part = jb.part;
  if (threads < 1) threads = 1;
  const int64_t rows = n * jb.ho;
  if (threads > rows) threads = (int)rows;
  /* a chunk's rows of x (C sh Wp floats each, plus two rows of taps) and of dyT (Wo opad)
     should share a 256 KiB slice of L2 */
  const int64_t row_bytes = 4 * (c * sh * jb.wp + jb.wo * jb.opad);
  jb.chunk = 262144 / row_bytes;
  if (jb.chunk < 1) jb.chunk = 1;
  const int64_t per = c * 9 * jb.opad;
  memset(part, 0, (size_t)(threads * per) * sizeof(float));
  run(&jb, threads);
  for (int64_t oc = 0; oc < o; oc++)
    for (int64_t r = 0; r < c * 9; r++) {
      float sum = 0.0f;
      for (int t = 0; t < threads; t++) sum += part[t * per + r * jb.opad + oc];
      dw[oc * c * 9 + r] = sum;
    }
}

/* ------------------------------------------------- input gradient, stride 2, padding 1 */

/* The input gradient of a 3x3 convolution with stride 2 and padding 1 (the resnet's
   downsampling convolutions), dx[n, c, u, v] = sum of dy[n, o, a, b] W[o, c, i, j] over the
   (o, a, b, i, j) with u = 2a + i - 1 and v = 2b + j - 1. PyTorch runs it as a transposed
   convolution, which oneDNN handles slowly when dx has few channels (at 16, twice the time of
   the forward convolution of the same size; RESULTS.md).

   Along one axis, an even pixel u = 2m is reached only by tap i = 1 (from a = m), an odd one
   u = 2m + 1 by taps i = 2 (a = m) and i = 0 (a = m + 1). So each of the four phases (u, v
   even or odd) of dx is a stride-1 correlation of dy with 1, 2, 2 or 4 of the nine taps,
   nine in all, the transposed convolution's own work with nothing multiplied by a zero, and
   every pixel of dx is written once. dy is copied onto a grid g[o][n][Ho + 1][Wo + 1] (a zero
   row and column after each image, for a = m + 1 past the edge); on it, a phase's taps are
   fixed offsets (0, 1, Wg, Wg + 1) from the position (n, m, l). The micro-kernel is the
   forward's shape: per block of positions (V vectors of them) and R channels c of dx, loads
   the positions at each tap's offset, broadcasts R weights, R V multiply-adds (AVX-512: R = 8,
   V = 3, 24 accumulators). The two phases of a row parity go through per-thread buffers (C x
   POS floats each) and are stored interleaved, a contiguous run of each row of dx. Threads
   split the blocks of positions. */

#define POS 48 /* positions per block: 3 vectors of 16 (AVX-512), 6 of 8, 12 of 4 */

typedef struct {
  const float *dy, *kt; /* dy (N, O, Ho, Wo); the weights as kt[o][t][c], t = 3 i + j */
  float *g, *bufs, *dx; /* dy's grid (O gs floats); a buffer per thread; dx (N, C, H, W) */
  int64_t n, c, o, h, w, ho, wo, hg, wg, gs, blocks;
  int64_t off[4], tap[4], taps; /* the current phase: grid offsets and tap indices */
} djob;

/* dst[(c0 + r) POS + v LANES ...] = sum over o and the phase's TAPS taps of
   kt[o][tap][c0 + r] g[o][p0 + off + v LANES ...]. One instance per (instruction set, R, V,
   TAPS): a fixed tap count lets the compiler unroll the taps and keep their offsets in
   registers. */
#define DGRAD_BLOCK(NAME, ATTR, LANES, R, V, TAPS)                                           \
  typedef float NAME##_u __attribute__((vector_size(4 * LANES), aligned(4)));              \
  ATTR static void NAME(const djob *jb, int64_t p0, int64_t c0, float *dst) {              \
    const int64_t c_n = jb->c;                                                             \
    int64_t off[TAPS], kof[TAPS];                                                          \
    for (int t = 0; t < TAPS; t++) off[t] = jb->off[t], kof[t] = jb->tap[t] * c_n;        \
    NAME##_u acc[R][V];                                                                    \
    for (int r = 0; r < R; r++)                                                            \
      for (int v = 0; v < V; v++) acc[r][v] = (NAME##_u){0};                               \
    for (int64_t o = 0; o < jb->o; o++) {                                                  \
      const float *go = jb->g + o * jb->gs + p0, *ko = jb->kt + o * 9 * c_n + c0;          \
      for (int t = 0; t < TAPS; t++) {                                                     \
        NAME##_u in[V];                                                                    \
        for (int v = 0; v < V; v++) in[v] = *(const NAME##_u *)(go + off[t] + v * LANES);  \
        const float *k = ko + kof[t];                                                      \
        for (int r = 0; r < R; r++)                                                        \
          for (int v = 0; v < V; v++) acc[r][v] += in[v] * k[r];                           \
      }                                                                                    \
    }                                                                                      \
    for (int r = 0; r < R; r++)                                                            \
      for (int v = 0; v < V; v++) *(NAME##_u *)(dst + (c0 + r) * POS + v * LANES) = acc[r][v]; \
  }

/* the micro-kernels of one instruction set for 1, 2 and 4 taps, and a dispatcher by count */
#define DGRAD_SET(NAME, ATTR, LANES, R, V)                                                   \
  DGRAD_BLOCK(NAME##_t1, ATTR, LANES, R, V, 1)                                              \
  DGRAD_BLOCK(NAME##_t2, ATTR, LANES, R, V, 2)                                              \
  DGRAD_BLOCK(NAME##_t4, ATTR, LANES, R, V, 4)                                              \
  static void NAME(const djob *jb, int64_t p0, int64_t c0, float *dst) {                   \
    if (jb->taps == 1) NAME##_t1(jb, p0, c0, dst);                                          \
    else if (jb->taps == 2) NAME##_t2(jb, p0, c0, dst);                                     \
    else NAME##_t4(jb, p0, c0, dst);                                                        \
  }

#ifdef HAVE_X86
DGRAD_SET(dgrad_avx512_r8, __attribute__((target("avx512f,fma"))), 16, 8, 3)
DGRAD_SET(dgrad_avx512_r1, __attribute__((target("avx512f,fma"))), 16, 1, 3)
DGRAD_SET(dgrad_avx2_r4, __attribute__((target("avx2,fma"))), 8, 4, 2)
DGRAD_SET(dgrad_avx2_r1, __attribute__((target("avx2,fma"))), 8, 1, 2)
#endif
DGRAD_SET(dgrad_plain_r4, , 4, 4, 2)
DGRAD_SET(dgrad_plain_r1, , 4, 1, 2)

/* every channel of dx at the positions [p0, p0 + POS) of the current phase, into buf */
static void dgrad_block(const djob *jb, int64_t p0, float *buf) {
  const int64_t c_n = jb->c;
#ifdef HAVE_X86
  if (__builtin_cpu_supports("avx512f")) {
    int64_t c = 0;
    for (; c + 8 <= c_n; c += 8) dgrad_avx512_r8(jb, p0, c, buf);
    for (; c < c_n; c++) dgrad_avx512_r1(jb, p0, c, buf);
    return;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    for (int64_t p = 0; p < POS; p += 16) {
      int64_t c = 0;
      for (; c + 4 <= c_n; c += 4) dgrad_avx2_r4(jb, p0 + p, c, buf + p);
      for (; c < c_n; c++) dgrad_avx2_r1(jb, p0 + p, c, buf + p);
    }
    return;
  }
#endif
  for (int64_t p = 0; p < POS; p += 8) {
    int64_t c = 0;
    for (; c + 4 <= c_n; c += 4) dgrad_plain_r4(jb, p0 + p, c, buf + p);
    for (; c < c_n; c++) dgrad_plain_r1(jb, p0 + p, c, buf + p);
  }
}

/* The buffers' valid positions (m, l) of the phases (pu, 0) and (pu, 1) to dx[n, c, 2m + pu,
   2l] and dx[n, c, 2m + pu, 2l + 1]: one contiguous run of a row of dx per grid row. */
static void dgrad_store(const djob *jb, int64_t p0, int pu, const float *even, const float *odd) {
  const int64_t img = jb->hg * jb->wg, rows = (jb->h - pu + 1) / 2;
  const int64_t cols_e = (jb->w + 1) / 2, cols_o = jb->w / 2;
  const int64_t end = p0 + POS < jb->n * img ? p0 + POS : jb->n * img;
  for (int64_t p = p0; p < end;) { /* a grid row's piece at a time */
    const int64_t n = p / img, m = (p - n * img) / jb->wg, l = p - n * img - m * jb->wg;
    const int64_t len = jb->wg - l < end - p ? jb->wg - l : end - p;
    const int64_t ce = l < cols_e ? (cols_e - l < len ? cols_e - l : len) : 0;
    const int64_t co = l < cols_o ? (cols_o - l < len ? cols_o - l : len) : 0;
    if (m < rows)
      for (int64_t c = 0; c < jb->c; c++) {
        float *to = jb->dx + ((n * jb->c + c) * jb->h + 2 * m + pu) * jb->w + 2 * l;
        const float *e = even + c * POS + (p - p0), *o = odd + c * POS + (p - p0);
        for (int64_t k = 0; k < co; k++) to[2 * k] = e[k], to[2 * k + 1] = o[k];
        if (ce > co) to[2 * co] = e[co]; /* an odd width: one even pixel more */
      }
    p += len;
  }
}

/* dy's channel o onto its grid: each image's rows followed by a zero, then a zero row, and
   zeros after the last image up to the grid's length gs (only positions past the last image
   read those, and they are never stored; zeros keep stale, possibly subnormal, floats out of
   the multiplies, which would slow them) */
static void dgrad_grid(const djob *jb, int64_t o) {
  float *dst = jb->g + o * jb->gs;
  for (int64_t n = 0; n < jb->n; n++) {
    const float *src = jb->dy + (n * jb->o + o) * jb->ho * jb->wo;
    float *to = dst + n * jb->hg * jb->wg;
    for (int64_t a = 0; a < jb->ho; a++) {
      memcpy(to + a * jb->wg, src + a * jb->wo, (size_t)jb->wo * sizeof(float));
      to[a * jb->wg + jb->wo] = 0.0f;
    }
    memset(to + jb->ho * jb->wg, 0, (size_t)jb->wg * sizeof(float));
  }
  const int64_t used = jb->n * jb->hg * jb->wg;
  memset(dst + used, 0, (size_t)(jb->gs - used) * sizeof(float));
}

static void dgrad_layout(djob *jb) {
  jb->ho = (jb->h + 1) / 2, jb->wo = (jb->w + 1) / 2; /* (H + 2 - 3) / 2 + 1 */
  jb->hg = jb->ho + 1, jb->wg = jb->wo + 1;
  jb->blocks = (jb->n * jb->hg * jb->wg + POS - 1) / POS;
  jb->gs = jb->blocks * POS + jb->wg + 1; /* the last block's reach: offset Wg + 1 */
  jb->gs = (jb->gs + 15) / 16 * 16;
}

/* Floats of workspace handgrad_conv3x3_dgrad_s2 needs for dx (N, C, H, W) from dy (N, O,
   ceil(H / 2), ceil(W / 2)): dy's grid, the weights rearranged, a buffer per thread. */
int64_t handgrad_conv3x3_dgrad_s2_space(int64_t n, int64_t c, int64_t h, int64_t w, int64_t o,
                                        int threads) {
  djob jb = {0};
  jb.n = n, jb.h = h, jb.w = w;
  dgrad_layout(&jb);
  return o * jb.gs + o * 9 * c + (threads < 1 ? 1 : threads) * 2 * c * POS;
}

/* dx (N, C, H, W) of a 3x3 convolution with stride 2 and padding 1, weights w (O, C, 3, 3),
   from dy (N, O, ceil(H / 2), ceil(W / 2)); space: handgrad_conv3x3_dgrad_s2_space floats. */
void handgrad_conv3x3_dgrad_s2(const float *dy, const float *w, float *dx, float *space,
                               int64_t n, int64_t c, int64_t h, int64_t wd, int64_t o,
                               int threads) {
  djob jb = {0};
  jb.dy = dy, jb.dx = dx, jb.n = n, jb.c = c, jb.o = o, jb.h = h, jb.w = wd;
  dgrad_layout(&jb);
  float *kt = space + o * jb.gs;
  jb.g = space, jb.kt = kt, jb.bufs = kt + o * 9 * c;
  for (int64_t oc = 0; oc < o; oc++) /* kt[o][t][c] = W[o][c][t] */
    for (int64_t ch = 0; ch < c; ch++)
      for (int t = 0; t < 9; t++) kt[(oc * 9 + t) * c + ch] = w[(oc * c + ch) * 9 + t];
  if (threads < 1) threads = 1;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) firstprivate(jb)
#endif
  {
#ifdef _OPENMP
    float *buf = jb.bufs + omp_get_thread_num() * 2 * c * POS; /* even, odd columns */
#pragma omp for schedule(static)
#else
    float *buf = jb.bufs;
#endif
    for (int64_t oc = 0; oc < o; oc++) dgrad_grid(&jb, oc);
    /* along an axis: phase 0 is tap 1 at offset 0; phase 1 taps 2 (offset 0) and 0 (next) */
    for (int pu = 0; pu < 2 && pu < h; pu++) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
      for (int64_t b = 0; b < jb.blocks; b++) {
        for (int pv = 0; pv < 2; pv++) {
          jb.taps = 0;
          for (int di = 0; di <= pu; di++)
            for (int dj = 0; dj <= pv; dj++) {
              const int i = pu ? (di ? 0 : 2) : 1, j = pv ? (dj ? 0 : 2) : 1;
              jb.off[jb.taps] = di * jb.wg + dj, jb.tap[jb.taps] = 3 * i + j, jb.taps++;
            }
          dgrad_block(&jb, b * POS, buf + pv * c * POS);
        }
        dgrad_store(&jb, b * POS, pu, buf, buf + c * POS);
      }
    }
  }
}

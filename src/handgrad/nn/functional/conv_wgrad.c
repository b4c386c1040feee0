/* The weight gradient of a 3x3 convolution (float32, NCHW, any stride, one group), written out
   by hand:

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
} job;

/* x onto its padded grid, channel ch (rows of zeros around each image) */
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

/* dy's image n as dyT[q][o], q = (n Ho + a) Wo + b; the padded channels are zero */
static void copy_dy(const job *jb, int64_t n) {
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
    const int64_t wp = jb->wp, wo = jb->wo, opad = jb->opad, sw = jb->sw;                  \
    const int64_t cs = jb->n * jb->hp * wp; /* one channel's grid */                        \
    const int64_t off[9] = {0, 1, 2, wp, wp + 1, wp + 2, 2 * wp, 2 * wp + 1, 2 * wp + 2};  \
    NAME##_v acc[K * 9][V];                                                                 \
    for (int r = 0; r < K * 9; r++)                                                         \
      for (int v = 0; v < V; v++)                                                           \
        acc[r][v] = *(const NAME##_v *)(part + ((c0 * 9 + r) * opad + o0 + v * LANES));     \
    for (int64_t row = r0; row < r1; row++) {                                               \
      const int64_t n = row / jb->ho, a = row - n * jb->ho;                                 \
      const float *xr = jb->xg + c0 * cs + n * jb->hp * wp + a * jb->sh * wp;               \
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

typedef void (*block_fn)(const job *, float *, int64_t, int64_t, int64_t, int64_t);

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86 1
WGRAD_BLOCK(avx512_v2k1, __attribute__((target("avx512f,fma"))), 16, 2, 1)
WGRAD_BLOCK(avx512_v1k2, __attribute__((target("avx512f,fma"))), 16, 1, 2)
WGRAD_BLOCK(avx512_v1k1, __attribute__((target("avx512f,fma"))), 16, 1, 1)
WGRAD_BLOCK(avx2_v1k1, __attribute__((target("avx2,fma"))), 8, 1, 1)
#endif
WGRAD_BLOCK(plain_v1k1, , 4, 1, 1)

/* The blocks of (output, input) channels that cover one chunk of rows, with the widest
   micro-kernel each block allows. */
static void chunk_sums(const job *jb, float *part, int64_t r0, int64_t r1) {
  const int64_t opad = jb->opad, c_n = jb->c;
#ifdef HAVE_X86
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
    for (int64_t ch = 0; ch < jb->c; ch++) copy_x(jb, ch);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t n = 0; n < jb->n; n++) copy_dy(jb, n);
    /* this thread's rows, in chunks; its private sums */
    const int64_t lo = rows * t / nt, hi = rows * (t + 1) / nt;
    for (int64_t r = lo; r < hi; r += jb->chunk)
      chunk_sums(jb, jb->part + t * per, r, r + jb->chunk < hi ? r + jb->chunk : hi);
  }
}

/* dw (O, C, 3, 3) = the weight gradient of a 3x3 convolution with stride (sh, sw) and padding
   (ph, pw) of x (N, C, H, W), dy (N, O, Ho, Wo). Workspaces: xg (C N Hp Wp floats), dyt
   (N Ho Wo opad, 64-byte aligned, opad = O rounded up to 16) and part (threads C 9 opad,
   64-byte aligned). */
void handgrad_conv3x3_wgrad(const float *x, const float *dy, float *dw, float *xg, float *dyt,
                            float *part, int64_t n, int64_t c, int64_t h, int64_t w, int64_t o,
                            int64_t sh, int64_t sw, int64_t ph, int64_t pw, int threads) {
  job jb = {0};
  jb.x = x, jb.dy = dy, jb.xg = xg, jb.dyt = dyt, jb.part = part;
  jb.n = n, jb.c = c, jb.h = h, jb.w = w, jb.o = o, jb.opad = (o + OPAD - 1) / OPAD * OPAD;
  jb.sh = sh, jb.sw = sw, jb.ph = ph, jb.pw = pw, jb.hp = h + 2 * ph, jb.wp = w + 2 * pw;
  jb.ho = (jb.hp - 3) / sh + 1, jb.wo = (jb.wp - 3) / sw + 1;
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

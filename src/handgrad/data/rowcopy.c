/* Row copies for handgrad's DataLoader (see rowcopy.py, which compiles and loads this file).
 *
 * A shuffled epoch is out[j] = x[idx[j]]: 50,000 rows of 3,136 bytes for MNIST. torch's
 * index_select reads the rows in random order and writes them in order through the cache, so
 * every destination line is first read from memory (a write-allocate), then written back.
 * This does the same copy the other way round: it walks x in order (the hardware prefetcher
 * streams it) and sends each row to its place with non-temporal stores, which go to memory
 * without reading the line first (figures in benchmarks/RESULTS.md; rowcopy.py leaves many
 * threads to index_select, which scales better there).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* For every row i of src (n_rows rows of row_bytes bytes) with dest[i] >= 0, copy it to row
 * dest[i] of out. The caller guarantees that dest holds distinct rows of out. */
void handgrad_scatter_rows(const char *src, const int64_t *dest, int64_t n_rows,
                           int64_t row_bytes, char *out) {
#if defined(__SSE2__)
    /* Non-temporal stores need 16-byte aligned destinations: every row is one when out is
     * and the row length is a multiple of 16 (784 float32 pixels: 3,136 bytes). */
    const int stream = ((uintptr_t)out % 16 == 0) && (row_bytes % 16 == 0);
#endif
    for (int64_t i = 0; i < n_rows; i++) {
        const int64_t d = dest[i];
        if (d < 0)
            continue;
        const char *s = src + i * row_bytes;
        char *o = out + d * row_bytes;
#if defined(__SSE2__)
        if (stream) {
            for (int64_t k = 0; k < row_bytes; k += 16)
                _mm_stream_si128((__m128i *)(o + k), _mm_loadu_si128((const __m128i *)(s + k)));
            continue;
        }
#endif
        memcpy(o, s, (size_t)row_bytes);
    }
#if defined(__SSE2__)
    _mm_sfence(); /* the streamed rows are visible to other threads before we return */
#endif
}

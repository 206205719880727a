/*
 * zfp_peer: the ZFP side of `make bench-codec` (bench/codec/run.ts drives it).
 *
 * Reads a raw little-endian f32 file, compresses it as one 1-D field with ZFP 1.0 in
 * fixed-accuracy mode (zfp_stream_set_accuracy, tolerance = the absolute bound), decompresses it,
 * and prints one JSON line: compressed bytes, ratio against the f32 bytes, the best time of REPS
 * repetitions (after one warm-up) for compression and decompression, and the max |x - x^| over all
 * values (in f64).
 *
 * THREADS = 1 runs serially (zfp_exec_serial). THREADS > 1 compresses with OpenMP
 * (zfp_exec_omp, zfp_stream_set_omp_threads). ZFP 1.0 has no OpenMP decompressor, so with
 * THREADS > 1 the stream is decoded once, serially, only to check it ("decompress_s": null).
 *
 * Built by the `bench-codec` rule of the Makefile (Debian's libzfp-dev):
 *   gcc -O3 -march=x86-64-v2 -fopenmp -o build/bench/zfp_peer bench/codec/zfp_peer.c -lzfp -lm
 * Run:
 *   build/bench/zfp_peer FILE.f32 TOLERANCE THREADS REPS
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zfp.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char* what) {
  fprintf(stderr, "zfp_peer: %s\n", what);
  exit(1);
}

/* A zfp_stream over `buf`, in fixed-accuracy mode, with the execution policy asked for. */
static zfp_stream* open_stream(void* buf, size_t cap, double tol, unsigned threads, bitstream** bs) {
  zfp_stream* zfp = zfp_stream_open(NULL);
  if (!zfp) die("zfp_stream_open failed");
  zfp_stream_set_accuracy(zfp, tol);
  if (threads > 1) {
    if (!zfp_stream_set_execution(zfp, zfp_exec_omp)) die("this libzfp has no OpenMP execution");
    if (!zfp_stream_set_omp_threads(zfp, threads)) die("zfp_stream_set_omp_threads failed");
  } else if (!zfp_stream_set_execution(zfp, zfp_exec_serial)) {
    die("zfp_stream_set_execution(serial) failed");
  }
  *bs = stream_open(buf, cap);
  if (!*bs) die("stream_open failed");
  zfp_stream_set_bit_stream(zfp, *bs);
  return zfp;
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s FILE.f32 TOLERANCE THREADS REPS\n", argv[0]);
    return 2;
  }
  const char* path = argv[1];
  const double tol = strtod(argv[2], NULL);
  const unsigned threads = (unsigned)strtoul(argv[3], NULL, 10);
  const int reps = atoi(argv[4]);
  if (!(tol > 0) || threads < 1 || reps < 1) die("bad arguments");

  FILE* f = fopen(path, "rb");
  if (!f) die("cannot open the input file");
  fseek(f, 0, SEEK_END);
  const long fbytes = ftell(f);
  fseek(f, 0, SEEK_SET);
  if (fbytes <= 0 || fbytes % 4 != 0) die("input is not a whole number of f32 values");
  const size_t n = (size_t)fbytes / 4;
  float* src = malloc(n * sizeof(float));
  float* dst = malloc(n * sizeof(float));
  if (!src || !dst) die("out of memory");
  if (fread(src, sizeof(float), n, f) != n) die("short read");
  fclose(f);
  memset(dst, 0, n * sizeof(float)); /* touch the pages before timing */

  zfp_field* in = zfp_field_1d(src, zfp_type_float, n);
  zfp_field* out = zfp_field_1d(dst, zfp_type_float, n);

  /* Size the buffer from a probe stream of the same mode. */
  bitstream* bs;
  zfp_stream* probe = open_stream(NULL, 0, tol, 1, &bs);
  const size_t cap = zfp_stream_maximum_size(probe, in);
  stream_close(bs);
  zfp_stream_close(probe);
  void* buf = malloc(cap);
  if (!buf) die("out of memory");
  memset(buf, 0, cap);

  zfp_stream* zc = open_stream(buf, cap, tol, threads, &bs);
  size_t bytes = 0;
  double best_c = INFINITY;
  for (int r = 0; r <= reps; r++) { /* r = 0 is the warm-up */
    zfp_stream_rewind(zc);
    const double t0 = now_s();
    bytes = zfp_compress(zc, in);
    const double t = now_s() - t0;
    if (bytes == 0) die("zfp_compress failed");
    if (r > 0 && t < best_c) best_c = t;
  }
  stream_close(bs);
  zfp_stream_close(zc);

  /* Decompression is serial in ZFP 1.0 whatever the policy; time it only for THREADS = 1. */
  bitstream* bd;
  zfp_stream* zd = open_stream(buf, bytes, tol, 1, &bd);
  double best_d = INFINITY;
  const int dreps = threads > 1 ? 0 : reps;
  for (int r = 0; r <= dreps; r++) {
    zfp_stream_rewind(zd);
    const double t0 = now_s();
    const size_t used = zfp_decompress(zd, out);
    const double t = now_s() - t0;
    if (used == 0) die("zfp_decompress failed");
    if (r > 0 && t < best_d) best_d = t;
  }
  stream_close(bd);
  zfp_stream_close(zd);

  double max_err = 0;
  for (size_t i = 0; i < n; i++) {
    const double e = fabs((double)src[i] - (double)dst[i]);
    if (e > max_err || e != e) max_err = e;
  }

  printf("{\"n\":%zu,\"tolerance\":%.17g,\"threads\":%u,\"reps\":%d,\"bytes\":%zu,"
         "\"ratio_vs_f32\":%.6f,\"compress_s\":%.9f,",
         n, tol, threads, reps, bytes, (double)(n * 4) / (double)bytes, best_c);
  if (threads > 1) printf("\"decompress_s\":null,");
  else printf("\"decompress_s\":%.9f,", best_d);
  printf("\"max_abs_error\":%.9g,\"zfp_version\":\"%s\"}\n", max_err, ZFP_VERSION_STRING);

  zfp_field_free(in);
  zfp_field_free(out);
  free(buf);
  free(src);
  free(dst);
  return 0;
}

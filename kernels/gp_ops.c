/* graphprune kernels: onnxruntime custom ops SparseMatMul and SparseConv (domain ai.graphprune).
 *
 * Registration, the op descriptors, argument checks, one-time packing of the constant weight and the
 * dispatch to the kernels of the best instruction set this CPU has (gp_portable.c, gp_avx2.c,
 * gp_avx512.c). Threads: onnxruntime's own intra-op pool through KernelContext_ParallelFor, so the
 * session's intra_op_num_threads governs these ops like every built-in one.
 */
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gp_common.h"
#include "gp_kernels.h"

#define GP_EXPORT __attribute__((visibility("default")))
#define GP_DOMAIN "ai.graphprune"

const OrtApi* g_api; /* the table the runtime handed us (version GP_ORT_API_VERSION) */

OrtStatus* gp_err(int code, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return GP_API(g_api, CreateStatus)(code, buf);
}


/* ------------------------------------------------------------------ ISA choice */

static int cpu_has_avx2(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static int cpu_has_avx512(void) {
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

/* GRAPHPRUNE_KERNELS_ISA=portable|avx2|avx512 caps the choice (tests and benchmarks use it); the
 * default is the best the CPU supports. A request above the CPU falls back to what it has. */
static const gp_isa* choose_isa(void) {
  const char* want = getenv("GRAPHPRUNE_KERNELS_ISA");
  int cap = 2;
  if (want && !strcmp(want, "portable")) cap = 0;
  else if (want && !strcmp(want, "avx2")) cap = 1;
  if (cap >= 2 && cpu_has_avx512()) return &gp_isa_avx512;
  if (cap >= 1 && cpu_has_avx2()) return &gp_isa_avx2;
  return &gp_isa_portable;
}

/* ------------------------------------------------------------------ kernel state */

enum { OP_MATMUL = 0, OP_CONV = 1 };

typedef struct gp_kernel {
  int op;
  int64_t K, N, pattern, pattern_n, pattern_m, block_k, block_n;
  const gp_isa* isa;
  int packed_ok;      /* weights were constant and are packed below */
  gp_packed pk;       /* layout + owned copies */
  gp_csr csr;         /* owned copy of the canonical CSR (used by the many-row kernel) */
  int64_t spmm_min_m; /* rows from which the transposed SpMM is used */
} gp_kernel;

static int64_t getenv_i64(const char* name, int64_t dflt) {
  const char* s = getenv(name);
  if (!s || !*s) return dflt;
  return strtoll(s, NULL, 10);
}

static void* xalloc(size_t bytes) {
  size_t b = (bytes + 63) / 64 * 64;
  return aligned_alloc(64, b ? b : 64);
}

static void free_packed(gp_packed* p) {
  free(p->sptr);
  free(p->val);
  free(p->idx);
  free(p->bits);
  free(p->perm);
  memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------------ tensor helpers */


OrtStatus* read_tensor(const OrtValue* v, tensor* t) {
  OrtTensorTypeAndShapeInfo* info = NULL;
  size_t cnt = 0;
  TRY(GP_API(g_api, GetTensorTypeAndShape)(v, &info));
  OrtStatus* st = GP_API(g_api, GetTensorElementType)(info, &t->type);
  if (!st) st = GP_API(g_api, GetDimensionsCount)(info, &t->rank);
  if (!st && t->rank > 16) st = gp_err(GP_ORT_INVALID_ARGUMENT, "graphprune kernels: rank %zu > 16", t->rank);
  if (!st) st = GP_API(g_api, GetDimensions)(info, t->dims, t->rank);
  if (!st) st = GP_API(g_api, GetTensorShapeElementCount)(info, &cnt);
  GP_API(g_api, ReleaseTensorTypeAndShapeInfo)(info);
  if (st) return st;
  t->count = (int64_t)cnt;
  return GP_API(g_api, GetTensorMutableData)((OrtValue*)v, &t->data);
}

static const char* op_name(const gp_kernel* k) { return k->op == OP_MATMUL ? "SparseMatMul" : "SparseConv"; }

/* Checks the weight tensors (values, indices, indptr, bias) against the contract. */
static OrtStatus* check_weights(const gp_kernel* k, const tensor* val, const tensor* idx, const tensor* ptr,
                                const tensor* bias) {
  const char* op = op_name(k);
  if (val->type != GP_T_FLOAT || idx->type != GP_T_INT32 || ptr->type != GP_T_INT32 || bias->type != GP_T_FLOAT)
    return gp_err(GP_ORT_INVALID_ARGUMENT,
                  "%s: values and bias must be float32, indices and indptr int32 (kernels/README.md)", op);
  if (val->rank != 1 || idx->rank != 1 || ptr->rank != 1 || bias->rank != 1)
    return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: values, indices, indptr and bias must be 1-D", op);
  if (ptr->count != k->N + 1)
    return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: indptr has %lld entries, expected N+1 = %lld", op,
                  (long long)ptr->count, (long long)(k->N + 1));
  if (bias->count != k->N)
    return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: bias has %lld entries, expected N = %lld", op,
                  (long long)bias->count, (long long)k->N);
  if (val->count != idx->count)
    return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: values (%lld) and indices (%lld) differ in length", op,
                  (long long)val->count, (long long)idx->count);
  const int32_t* p = (const int32_t*)ptr->data;
  const int32_t* ix = (const int32_t*)idx->data;
  if (p[0] != 0 || p[k->N] != val->count)
    return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: indptr must start at 0 and end at nnz = %lld (got %d .. %d)", op,
                  (long long)val->count, p[0], p[k->N]);
  for (int64_t n = 0; n < k->N; ++n)
    if (p[n + 1] < p[n])
      return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: indptr decreases at output %lld", op, (long long)n);
  for (int64_t j = 0; j < val->count; ++j)
    if (ix[j] < 0 || ix[j] >= k->K)
      return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: index %d at position %lld is outside [0, K=%lld)", op, ix[j],
                    (long long)j, (long long)k->K);
  for (int64_t n = 0; n < k->N; ++n)
    for (int64_t j = p[n] + 1; j < p[n + 1]; ++j)
      if (ix[j] <= ix[j - 1])
        return gp_err(GP_ORT_INVALID_ARGUMENT,
                      "%s: indices of output %lld are not strictly ascending (%d then %d at position %lld)", op,
                      (long long)n, ix[j - 1], ix[j], (long long)j);
  return NULL;
}

/* ------------------------------------------------------------------ packing */

static int conforms_nm24(const gp_csr* w) {
  for (int64_t n = 0; n < w->N; ++n) {
    int64_t last_group = -1, cnt = 0;
    for (int64_t j = w->ptr[n]; j < w->ptr[n + 1]; ++j) {
      int64_t g = w->idx[j] / 4;
      if (j > w->ptr[n] && w->idx[j] <= w->idx[j - 1]) return 0; /* needs ascending, unique */
      cnt = (g == last_group) ? cnt + 1 : 1;
      last_group = g;
      if (cnt > 2) return 0;
    }
  }
  return 1;
}

/* Sliced ELL over outputs sorted by their nonzero count (longest first), so each slice's lanes have
 * similar lengths and little padding; perm maps slice lanes back to outputs. */
static int pack_sell(const gp_csr* w, int S, gp_packed* p) {
  p->layout = GP_LAYOUT_SELL;
  p->lanes = S;
  p->nslices = (w->N + S - 1) / S;
  int64_t maxlen = 0;
  for (int64_t n = 0; n < w->N; ++n)
    if (w->ptr[n + 1] - w->ptr[n] > maxlen) maxlen = w->ptr[n + 1] - w->ptr[n];
  int64_t* start = (int64_t*)calloc((size_t)maxlen + 2, sizeof(int64_t));
  p->perm = (int32_t*)xalloc((size_t)p->nslices * S * sizeof(int32_t));
  p->sptr = (int64_t*)xalloc((size_t)(p->nslices + 1) * sizeof(int64_t));
  if (!start || !p->perm || !p->sptr) {
    free(start);
    return 0;
  }
  /* counting sort by length, descending, stable */
  for (int64_t n = 0; n < w->N; ++n) start[maxlen - (w->ptr[n + 1] - w->ptr[n]) + 1]++;
  for (int64_t l = 1; l <= maxlen + 1; ++l) start[l] += start[l - 1];
  for (int64_t n = 0; n < w->N; ++n) p->perm[start[maxlen - (w->ptr[n + 1] - w->ptr[n])]++] = (int32_t)n;
  free(start);
  for (int64_t i = w->N; i < p->nslices * S; ++i) p->perm[i] = -1;
  p->sptr[0] = 0;
  for (int64_t s = 0; s < p->nslices; ++s) {
    int32_t n = p->perm[s * S]; /* the longest of its slice */
    p->sptr[s + 1] = p->sptr[s] + (w->ptr[n + 1] - w->ptr[n]);
  }
  int64_t steps = p->sptr[p->nslices];
  p->val = (float*)xalloc((size_t)steps * S * sizeof(float));
  p->idx = (uint16_t*)xalloc((size_t)steps * S * sizeof(uint16_t));
  if (!p->val || !p->idx) return 0;
  for (int64_t s = 0; s < p->nslices; ++s) {
    for (int l = 0; l < S; ++l) {
      int32_t n = p->perm[s * S + l];
      int64_t b = n >= 0 ? w->ptr[n] : 0, e = n >= 0 ? w->ptr[n + 1] : 0;
      /* padding reads an index the output already reads (times 0), so it adds no new inf/nan */
      uint16_t pad = e > b ? (uint16_t)w->idx[e - 1] : 0;
      for (int64_t t = 0; t < p->sptr[s + 1] - p->sptr[s]; ++t) {
        int64_t o = (p->sptr[s] + t) * S + l;
        p->val[o] = b + t < e ? w->val[b + t] : 0.f;
        p->idx[o] = b + t < e ? (uint16_t)w->idx[b + t] : pad;
      }
    }
  }
  return 1;
}

static int pack_nm24(const gp_csr* w, int S, gp_packed* p) {
  p->layout = GP_LAYOUT_NM24;
  p->lanes = S;
  p->nslices = (w->N + S - 1) / S;
  p->groups = (w->K + 3) / 4;
  size_t cells = (size_t)p->nslices * p->groups * 2;
  p->val = (float*)xalloc(cells * S * sizeof(float));
  p->bits = (uint32_t*)xalloc(cells * sizeof(uint32_t));
  if (!p->val || !p->bits) return 0;
  memset(p->val, 0, cells * S * sizeof(float));
  memset(p->bits, 0, cells * sizeof(uint32_t));
  for (int64_t n = 0; n < w->N; ++n) {
    int64_t s = n / S, l = n % S;
    int64_t last_group = -1, h = 0;
    for (int64_t j = w->ptr[n]; j < w->ptr[n + 1]; ++j) {
      int64_t g = w->idx[j] / 4;
      h = (g == last_group) ? h + 1 : 0;
      last_group = g;
      size_t cell = ((size_t)s * p->groups + g) * 2 + h;
      p->val[cell * S + l] = w->val[j];
      p->bits[cell] |= (uint32_t)(w->idx[j] % 4) << (2 * l);
    }
  }
  return 1;
}

/* Blocks of bn consecutive outputs: each block column lists the union of the k its outputs read (zeros
 * fill the gaps), so it is exact for block-sparse weights and a dense-like layout for dense-ish ones. */
static int64_t blkn_entries(const gp_csr* w, int bn, int32_t* mark) {
  int64_t total = 0;
  for (int64_t c = 0; c * bn < w->N; ++c) {
    int64_t ne = c * bn + bn < w->N ? c * bn + bn : w->N;
    for (int64_t n = c * bn; n < ne; ++n)
      for (int64_t j = w->ptr[n]; j < w->ptr[n + 1]; ++j)
        if (mark[w->idx[j]] != (int32_t)c + 1) mark[w->idx[j]] = (int32_t)c + 1, ++total;
  }
  return total;
}

static int pack_blkn(const gp_csr* w, int bn, gp_packed* p) {
  p->layout = GP_LAYOUT_BLKN;
  p->bn = bn;
  p->nslices = (w->N + bn - 1) / bn;
  int32_t* mark = (int32_t*)calloc((size_t)w->K, sizeof(int32_t));
  int32_t* pos = (int32_t*)malloc((size_t)w->K * sizeof(int32_t));
  p->sptr = (int64_t*)xalloc((size_t)(p->nslices + 1) * sizeof(int64_t));
  if (!mark || !pos || !p->sptr) goto fail;
  int64_t ent = blkn_entries(w, bn, mark);
  memset(mark, 0, (size_t)w->K * sizeof(int32_t));
  p->val = (float*)xalloc((size_t)ent * bn * sizeof(float));
  p->idx = (uint16_t*)xalloc((size_t)ent * sizeof(uint16_t));
  if (!p->val || !p->idx) goto fail;
  memset(p->val, 0, (size_t)ent * bn * sizeof(float));
  int64_t e = 0;
  p->sptr[0] = 0;
  for (int64_t c = 0; c < p->nslices; ++c) {
    int64_t n0 = c * bn, ne = n0 + bn < w->N ? n0 + bn : w->N;
    for (int64_t n = n0; n < ne; ++n)
      for (int64_t j = w->ptr[n]; j < w->ptr[n + 1]; ++j) mark[w->idx[j]] = (int32_t)c + 1;
    for (int64_t k = 0; k < w->K; ++k) /* ascending k within the column */
      if (mark[k] == (int32_t)c + 1) pos[k] = (int32_t)(e - p->sptr[c]), p->idx[e++] = (uint16_t)k;
    p->sptr[c + 1] = e;
    for (int64_t n = n0; n < ne; ++n)
      for (int64_t j = w->ptr[n]; j < w->ptr[n + 1]; ++j)
        p->val[(p->sptr[c] + pos[w->idx[j]]) * bn + (n - n0)] += w->val[j]; /* += : repeated k add up */
  }
  free(mark);
  free(pos);
  return 1;
fail:
  free(mark);
  free(pos);
  return 0;
}

/* The layout is chosen by an estimate of the batch-1 cost, in bytes streamed (measured on AVX-512 and
 * AVX2: the sliced-ELL loop costs about as much per stored nonzero as streaming 6.5 bytes; the 2:4 and
 * block loops run at memory speed). The pattern hint only sets the block width tried.
 * GRAPHPRUNE_KERNELS_LAYOUT=csr|sell|nm24|blkn forces a layout when the data allow it (benchmarks). */
static OrtStatus* pack(gp_kernel* k) {
  const gp_csr* w = &k->csr;
  const gp_isa* isa = k->isa;
  const char* force = getenv("GRAPHPRUNE_KERNELS_LAYOUT");
  int small_k = w->K <= 65536;
  int want = -1;
  if (force && *force) {
    if (!strcmp(force, "csr")) want = GP_LAYOUT_CSR;
    else if (!strcmp(force, "sell")) want = GP_LAYOUT_SELL;
    else if (!strcmp(force, "nm24")) want = GP_LAYOUT_NM24;
    else if (!strcmp(force, "blkn")) want = GP_LAYOUT_BLKN;
  }
  memset(&k->pk, 0, sizeof k->pk);
  k->pk.K = w->K;
  k->pk.N = w->N;
  const int S = isa->lanes;
  int bn = (k->pattern == 2 && k->block_n >= 2 && k->block_n <= 64) ? (int)k->block_n : (S ? S : 8);
  double cost[4] = {1e300, 1e300, 1e300, 1e300};
  cost[GP_LAYOUT_CSR] = 12.0 * (double)w->nnz + 8.0 * (double)w->N;
  if (S > 0 && isa->nm24_m1 && conforms_nm24(w))
    cost[GP_LAYOUT_NM24] = (double)((w->N + S - 1) / S) * (double)((w->K + 3) / 4) * (8.0 * S + 8.0);
  if (small_k && S > 0 && isa->sell_m1) {
    /* outputs sorted by length, S per slice: each slice costs S times its longest output */
    int64_t maxlen = 0;
    for (int64_t n = 0; n < w->N; ++n)
      if (w->ptr[n + 1] - w->ptr[n] > maxlen) maxlen = w->ptr[n + 1] - w->ptr[n];
    int64_t* hist = (int64_t*)calloc((size_t)maxlen + 1, sizeof(int64_t));
    if (!hist) return gp_err(GP_ORT_FAIL, "%s: out of memory packing the sparse weight", op_name(k));
    for (int64_t n = 0; n < w->N; ++n) hist[w->ptr[n + 1] - w->ptr[n]]++;
    double steps = 0;
    int64_t seen = 0;
    for (int64_t len = maxlen; len >= 0; --len)
      for (int64_t c = 0; c < hist[len]; ++c, ++seen)
        if (seen % S == 0) steps += (double)len;
    free(hist);
    cost[GP_LAYOUT_SELL] = 6.5 * steps * S;
  }
  if (small_k && isa->blkn_m1) {
    int32_t* mark = (int32_t*)calloc((size_t)w->K, sizeof(int32_t));
    if (!mark) return gp_err(GP_ORT_FAIL, "%s: out of memory packing the sparse weight", op_name(k));
    cost[GP_LAYOUT_BLKN] = (double)blkn_entries(w, bn, mark) * (4.0 * bn + 2.0);
    free(mark);
  }
  int best = GP_LAYOUT_CSR;
  for (int l = 1; l < 4; ++l)
    if (cost[l] < cost[best]) best = l;
  if (want >= 0 && cost[want] < 1e300) best = want;
  int ok = 1;
  if (best == GP_LAYOUT_NM24) ok = pack_nm24(w, S, &k->pk);
  else if (best == GP_LAYOUT_BLKN) ok = pack_blkn(w, bn, &k->pk);
  else if (best == GP_LAYOUT_SELL) ok = pack_sell(w, S, &k->pk);
  else k->pk.layout = GP_LAYOUT_CSR;
  if (!ok) {
    free_packed(&k->pk);
    return gp_err(GP_ORT_FAIL, "%s: out of memory packing the sparse weight", op_name(k));
  }
  if (getenv_i64("GRAPHPRUNE_KERNELS_VERBOSE", 0) > 0) {
    static const char* names[4] = {"csr", "sell", "nm24", "blkn"};
    fprintf(stderr, "graphprune kernels: %s K=%lld N=%lld nnz=%lld isa=%s layout=%s%s\n", op_name(k),
            (long long)w->K, (long long)w->N, (long long)w->nnz, isa->name, names[k->pk.layout],
            k->pk.layout == GP_LAYOUT_BLKN ? (bn == 4 ? "(4)" : bn == 8 ? "(8)" : bn == 16 ? "(16)" : "(n)") : "");
  }
  return NULL;
}

/* Copies the canonical CSR (owned by the kernel) and packs it. */
static OrtStatus* take_weights(gp_kernel* k, const tensor* val, const tensor* idx, const tensor* ptr) {
  int64_t nnz = val->count;
  float* v = (float*)xalloc((size_t)nnz * sizeof(float));
  int32_t* ix = (int32_t*)xalloc((size_t)nnz * sizeof(int32_t));
  int32_t* p = (int32_t*)xalloc((size_t)(k->N + 1) * sizeof(int32_t));
  if (!v || !ix || !p) {
    free(v), free(ix), free(p);
    return gp_err(GP_ORT_FAIL, "%s: out of memory", op_name(k));
  }
  memcpy(v, val->data, (size_t)nnz * sizeof(float));
  memcpy(ix, idx->data, (size_t)nnz * sizeof(int32_t));
  memcpy(p, ptr->data, (size_t)(k->N + 1) * sizeof(int32_t));
  k->csr = (gp_csr){k->K, k->N, nnz, v, ix, p};
  TRY(pack(k));
  k->packed_ok = 1;
  return NULL;
}

/* ------------------------------------------------------------------ descriptor callbacks */

static const char* name_matmul(const GpOrtCustomOp* op) { (void)op; return "SparseMatMul"; }
static const char* name_conv(const GpOrtCustomOp* op) { (void)op; return "SparseConv"; }
static const char* ep_cpu(const GpOrtCustomOp* op) { (void)op; return "CPUExecutionProvider"; }
static int input_type(const GpOrtCustomOp* op, size_t i) {
  (void)op;
  return (i == 2 || i == 3) ? GP_T_INT32 : GP_T_FLOAT;
}
static size_t input_count(const GpOrtCustomOp* op) { (void)op; return 5; }
static int output_type(const GpOrtCustomOp* op, size_t i) { (void)op; (void)i; return GP_T_FLOAT; }
static size_t output_count(const GpOrtCustomOp* op) { (void)op; return 1; }
static int required(const GpOrtCustomOp* op, size_t i) { (void)op; (void)i; return 0; }
static int mem_default(const GpOrtCustomOp* op, size_t i) { (void)op; (void)i; return 0; }
static int one(const GpOrtCustomOp* op) { (void)op; return 1; }
static int zero(const GpOrtCustomOp* op) { (void)op; return 0; }
static int end_version(const GpOrtCustomOp* op) { (void)op; return INT_MAX; }

static void kernel_destroy(void* p) {
  gp_kernel* k = (gp_kernel*)p;
  if (!k) return;
  free_packed(&k->pk);
  free((void*)k->csr.val);
  free((void*)k->csr.idx);
  free((void*)k->csr.ptr);
  free(k);
}

static OrtStatus* get_attr(const OrtKernelInfo* info, const char* name, int64_t dflt, int64_t* out, int required_) {
  OrtStatus* st = GP_API(g_api, KernelInfoGetAttribute_int64)(info, name, out);
  if (!st) return NULL;
  if (required_) {
    char msg[512];
    snprintf(msg, sizeof msg, "graphprune kernels: required int attribute '%s' is missing or not an int (%s)", name,
             GP_API(g_api, GetErrorMessage)(st));
    GP_API(g_api, ReleaseStatus)(st);
    return gp_err(GP_ORT_INVALID_ARGUMENT, "%s", msg);
  }
  GP_API(g_api, ReleaseStatus)(st);
  *out = dflt;
  return NULL;
}

static OrtStatus* create_kernel(int opk, const OrtKernelInfo* info, void** out) {
  gp_kernel* k = (gp_kernel*)calloc(1, sizeof(gp_kernel));
  if (!k) return gp_err(GP_ORT_FAIL, "graphprune kernels: out of memory");
  k->op = opk;
  OrtStatus* st = NULL;
  if (!st) st = get_attr(info, "K", 0, &k->K, 1);
  if (!st) st = get_attr(info, "N", 0, &k->N, 1);
  if (!st) st = get_attr(info, "pattern", 0, &k->pattern, 0);
  if (!st) st = get_attr(info, "pattern_n", 0, &k->pattern_n, 0);
  if (!st) st = get_attr(info, "pattern_m", 0, &k->pattern_m, 0);
  if (!st) st = get_attr(info, "block_k", 1, &k->block_k, 0);
  if (!st) st = get_attr(info, "block_n", 1, &k->block_n, 0);
  if (!st && (k->K < 1 || k->N < 1 || k->K > INT32_MAX || k->N > INT32_MAX))
    st = gp_err(GP_ORT_INVALID_ARGUMENT, "%s: attributes K=%lld and N=%lld must be positive", op_name(k),
                (long long)k->K, (long long)k->N);
  if (st) {
    free(k);
    return st;
  }
  k->isa = choose_isa();
  k->spmm_min_m = getenv_i64("GRAPHPRUNE_KERNELS_SPMM_MIN_M", 2);
  /* Constant weights (initializers) are packed once, here. Otherwise they are read per call. */
  const OrtValue* cv[4] = {0};
  int all_const = 1;
  for (size_t i = 1; i <= 4 && all_const; ++i) {
    int is_const = 0;
    st = GP_API(g_api, KernelInfoGetConstantInput_tensor)(info, i, &is_const, &cv[i - 1]);
    if (st) {
      GP_API(g_api, ReleaseStatus)(st);
      st = NULL;
      is_const = 0;
    }
    all_const = is_const && cv[i - 1];
  }
  if (all_const) {
    tensor val, idx, ptr, bias;
    st = read_tensor(cv[0], &val);
    if (!st) st = read_tensor(cv[1], &idx);
    if (!st) st = read_tensor(cv[2], &ptr);
    if (!st) st = read_tensor(cv[3], &bias);
    if (!st) st = check_weights(k, &val, &idx, &ptr, &bias);
    if (!st) st = take_weights(k, &val, &idx, &ptr);
    if (st) {
      kernel_destroy(k);
      return st;
    }
  }
  *out = k;
  return NULL;
}

static OrtStatus* create_matmul(const GpOrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** out) {
  (void)op;
  (void)api;
  return create_kernel(OP_MATMUL, info, out);
}
static OrtStatus* create_conv(const GpOrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info, void** out) {
  (void)op;
  (void)api;
  return create_kernel(OP_CONV, info, out);
}

/* ------------------------------------------------------------------ compute */

typedef struct job {
  const gp_kernel* k;
  const gp_csr* w;
  const gp_packed* pk;
  const float* x;    /* MatMul rows [M][K] or transposed [K][ldx] */
  const float* bias;
  float* y;
  int64_t M, ldx, ldy;
  int64_t units, chunk;    /* per-row work units (slices / outputs), units per task */
  int64_t nchunk, mchunk;  /* SpMM tiles */
  int64_t n_tiles, m_tiles;
  int64_t batch_stride_x, batch_stride_y; /* conv: per image */
  int mode;                /* 0 = packed m1, 1 = csr m1, 2 = spmm_t, 3 = transpose out, 4 = 2:4 rows */
  float* y_rows;           /* mode 3: the final [M][N] output the transposed result is copied into */
} job;

static void transpose(const float* a, int64_t rows, int64_t cols, int64_t lda, float* b, int64_t ldb);

static void run_task(void* vj, size_t t) {
  const job* j = (const job*)vj;
  const gp_isa* isa = j->k->isa;
  if (j->mode == 3) { /* yt [N][ldy] -> y_rows [M][N], rows [t*chunk, ...) of y */
    int64_t m0 = (int64_t)t * j->chunk, m1 = m0 + j->chunk < j->M ? m0 + j->chunk : j->M;
    transpose(j->y + m0, j->k->N, m1 - m0, j->ldy, j->y_rows + m0 * j->k->N, j->k->N);
    return;
  }
  if (j->mode == 4) { /* 2:4 rows: tile (slices [s0, s1), rows [m0, m1)) */
    int64_t st = (int64_t)t / j->m_tiles, mt = (int64_t)t % j->m_tiles;
    int64_t s0 = st * j->chunk, s1 = s0 + j->chunk < j->units ? s0 + j->chunk : j->units;
    int64_t m0 = mt * j->mchunk, m1 = m0 + j->mchunk < j->M ? m0 + j->mchunk : j->M;
    isa->nm24_mr(j->pk, j->x + m0 * j->k->K, j->k->K, m1 - m0, j->bias, j->y + m0 * j->k->N, j->k->N, s0, s1);
    return;
  }
  if (j->mode == 0 || j->mode == 1) {
    int64_t per_row = (j->units + j->chunk - 1) / j->chunk;
    int64_t row = (int64_t)t / per_row, c = (int64_t)t % per_row;
    int64_t s0 = c * j->chunk, s1 = s0 + j->chunk < j->units ? s0 + j->chunk : j->units;
    const float* x = j->x + row * j->k->K;
    float* y = j->y + row * j->k->N;
    if (j->mode == 1) {
      isa->csr_m1(j->w, x, j->bias, y, s0, s1);
    } else {
      const gp_packed* p = j->pk;
      gp_m1_fn f = p->layout == GP_LAYOUT_SELL ? isa->sell_m1 : p->layout == GP_LAYOUT_NM24 ? isa->nm24_m1 : isa->blkn_m1;
      f(p, x, j->bias, y, s0, s1);
    }
  } else {
    int64_t per_img = j->n_tiles * j->m_tiles;
    int64_t b = (int64_t)t / per_img, r = (int64_t)t % per_img;
    int64_t nt = r / j->m_tiles, mt = r % j->m_tiles;
    int64_t n0 = nt * j->nchunk, n1 = n0 + j->nchunk < j->k->N ? n0 + j->nchunk : j->k->N;
    int64_t m0 = mt * j->mchunk, m1 = m0 + j->mchunk < j->M ? m0 + j->mchunk : j->M;
    isa->spmm_t(j->w, j->x + b * j->batch_stride_x, j->ldx, j->bias, j->y + b * j->batch_stride_y, j->ldy, n0, n1,
                m0, m1);
  }
}

static OrtStatus* run_tasks(OrtKernelContext* ctx, job* j, int64_t ntasks, int64_t work) {
  if (ntasks <= 1 || work < (1 << 15)) {
    for (int64_t t = 0; t < ntasks; ++t) run_task(j, (size_t)t);
    return NULL;
  }
  return GP_API(g_api, KernelContext_ParallelFor)(ctx, run_task, (size_t)ntasks, 0, j);
}

/* rows x (M of them, each K long) -> y rows (each N long), through the batch-1 kernels */
static OrtStatus* rows_m1(OrtKernelContext* ctx, const gp_kernel* k, const gp_csr* w, const float* x,
                          const float* bias, float* y, int64_t M) {
  job j = {0};
  j.k = k, j.w = w, j.pk = &k->pk, j.x = x, j.bias = bias, j.y = y, j.M = M;
  int packed = k->packed_ok && k->pk.layout != GP_LAYOUT_CSR;
  j.mode = packed ? 0 : 1;
  j.units = packed ? k->pk.nslices : k->N;
  int64_t per_unit = packed ? (k->pk.layout == GP_LAYOUT_BLKN ? k->pk.bn : k->pk.lanes) : 1;
  /* ~16 tasks per row at most, but not below ~4k multiply-adds each */
  int64_t avg_nnz = w->N ? (w->nnz + w->N - 1) / w->N : 0;
  int64_t min_units = (4096 / (avg_nnz * per_unit + 1)) + 1;
  j.chunk = (j.units + 15) / 16;
  if (j.chunk < min_units) j.chunk = min_units;
  if (j.chunk > j.units) j.chunk = j.units;
  if (j.chunk < 1) j.chunk = 1;
  int64_t ntasks = M * ((j.units + j.chunk - 1) / j.chunk);
  return run_tasks(ctx, &j, ntasks, M * w->nnz);
}

/* transposed SpMM over images: x [B][K][P] -> y [B][N][P] */
static OrtStatus* spmm(OrtKernelContext* ctx, const gp_kernel* k, const gp_csr* w, const float* xt, int64_t ldx,
                       const float* bias, float* yt, int64_t ldy, int64_t P, int64_t B, int64_t bsx, int64_t bsy,
                       float* y_rows) {
  job j = {0};
  j.k = k, j.w = w, j.x = xt, j.bias = bias, j.y = yt, j.M = P, j.ldx = ldx, j.ldy = ldy, j.mode = 2;
  j.batch_stride_x = bsx, j.batch_stride_y = bsy;
  j.mchunk = P < 256 ? P : 256;
  j.m_tiles = (P + j.mchunk - 1) / j.mchunk;
  j.nchunk = k->N < 64 ? k->N : 64;
  j.n_tiles = (k->N + j.nchunk - 1) / j.nchunk;
  TRY(run_tasks(ctx, &j, B * j.n_tiles * j.m_tiles, B * P * w->nnz));
  if (!y_rows) return NULL;
  /* MatMul: copy the transposed result out row-major, in a separate pass (fusing it into the tiles
   * evicts the transposed activations from L2 and was measured 3x slower) */
  job o = {0};
  o.k = k, o.y = yt, o.ldy = ldy, o.y_rows = y_rows, o.M = P, o.mode = 3, o.chunk = 16;
  return run_tasks(ctx, &o, (P + 15) / 16, P * k->N);
}

/* Per-thread scratch for the transposed activations, kept between calls (no allocation, no page faults
 * per call); each thread that runs a session holds at most the largest size it needed. */
static __thread float* t_scratch;
static __thread size_t t_scratch_n;

static float* scratch(size_t n) {
  if (n > t_scratch_n) {
    free(t_scratch);
    t_scratch = (float*)xalloc(n * sizeof(float));
    t_scratch_n = t_scratch ? n : 0;
  }
  return t_scratch;
}

static void transpose(const float* a, int64_t rows, int64_t cols, int64_t lda, float* b, int64_t ldb) {
  /* b[c][r] = a[r][c] in 32x32 tiles */
  for (int64_t r0 = 0; r0 < rows; r0 += 32)
    for (int64_t c0 = 0; c0 < cols; c0 += 32) {
      int64_t r1 = r0 + 32 < rows ? r0 + 32 : rows, c1 = c0 + 32 < cols ? c0 + 32 : cols;
      /* inner loop along b's rows: contiguous writes; the tile's 32 source lines stay in L1 (the other
       * order thrashes one L1 set when ldb is a multiple of 4 KB, e.g. N = 3072 floats) */
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) b[c * ldb + r] = a[r * lda + c];
    }
}

/* 2:4 weights on several rows run the 2:4 loop on 8 (AVX-512) / 4 (AVX2) rows per pass: the packed
 * weights (about half the bytes of the CSR) are read once per pass and stay in L2 between passes;
 * measured faster than the CSR SpMM at every row count tried (2 to 256). */
static int use_nm24_rows(const gp_kernel* k, int64_t rows) {
  return k->packed_ok && k->pk.layout == GP_LAYOUT_NM24 && k->isa->nm24_mr && rows <= k->isa->mr_rows;
}

static OrtStatus* nm24_rows_job(OrtKernelContext* ctx, const gp_kernel* k, const gp_csr* w, const float* x,
                                const float* bias, float* y, int64_t M) {
  job j = {0};
  j.k = k, j.pk = &k->pk, j.x = x, j.bias = bias, j.y = y, j.M = M, j.mode = 4;
  j.units = k->pk.nslices;
  /* tiles of at most ~256 KB of packed weights and 64 rows, so both stay in L2 across the passes */
  int64_t slice_bytes = k->pk.groups * 2 * (k->pk.lanes * 4 + 4);
  int64_t fit = (256 << 10) / (slice_bytes ? slice_bytes : 1);
  j.chunk = (j.units + 15) / 16;
  if (M > 8 && j.chunk > fit) j.chunk = fit > 1 ? fit : 1;
  j.mchunk = M < 64 ? M : 64;
  j.m_tiles = (M + j.mchunk - 1) / j.mchunk;
  return run_tasks(ctx, &j, ((j.units + j.chunk - 1) / j.chunk) * j.m_tiles, M * w->nnz);
}

static OrtStatus* compute(void* kp, OrtKernelContext* ctx) {
  gp_kernel* k = (gp_kernel*)kp;
  const char* op = op_name(k);
  size_t nin = 0;
  TRY(GP_API(g_api, KernelContext_GetInputCount)(ctx, &nin));
  if (nin != 5) return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: expects 5 inputs, got %zu", op, nin);
  const OrtValue* in[5];
  tensor t[5];
  for (size_t i = 0; i < 5; ++i) {
    TRY(GP_API(g_api, KernelContext_GetInput)(ctx, i, &in[i]));
    if (!in[i]) return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: input %zu is missing", op, i);
  }
  TRY(read_tensor(in[0], &t[0]));
  TRY(read_tensor(in[4], &t[4]));
  const tensor* X = &t[0];
  if (X->type != GP_T_FLOAT) return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: X must be float32", op);
  gp_csr wl;
  const gp_csr* w = &k->csr;
  if (!k->packed_ok) { /* weights are graph inputs, not initializers: check and use them as they are */
    TRY(read_tensor(in[1], &t[1]));
    TRY(read_tensor(in[2], &t[2]));
    TRY(read_tensor(in[3], &t[3]));
    TRY(check_weights(k, &t[1], &t[2], &t[3], &t[4]));
    wl = (gp_csr){k->K, k->N, t[1].count, (const float*)t[1].data, (const int32_t*)t[2].data,
                  (const int32_t*)t[3].data};
    w = &wl;
  } else if (t[4].type != GP_T_FLOAT || t[4].count != k->N) {
    return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: bias must be float32 with N = %lld entries", op, (long long)k->N);
  }
  const float* bias = (const float*)t[4].data;
  const float* x = (const float*)X->data;
  int64_t odims[16];
  memcpy(odims, X->dims, sizeof odims);
  if (k->op == OP_MATMUL) {
    if (X->rank < 1 || X->dims[X->rank - 1] != k->K)
      return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: X's last dimension must be K = %lld (X has rank %zu, last dim %lld)",
                    op, (long long)k->K, X->rank, X->rank ? (long long)X->dims[X->rank - 1] : 0LL);
    odims[X->rank - 1] = k->N;
  } else {
    if (X->rank < 2 || X->dims[1] != k->K)
      return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: X must be [B, K=%lld, *spatial] (got rank %zu, dim 1 = %lld)", op,
                    (long long)k->K, X->rank, X->rank >= 2 ? (long long)X->dims[1] : 0LL);
    odims[1] = k->N;
  }
  OrtValue* out = NULL;
  TRY(GP_API(g_api, KernelContext_GetOutput)(ctx, 0, odims, X->rank, &out));
  void* yv = NULL;
  TRY(GP_API(g_api, GetTensorMutableData)(out, &yv));
  float* y = (float*)yv;
  if (X->count == 0) return NULL;

  int64_t M, P = 1, B = 1;
  if (k->op == OP_MATMUL) {
    M = X->count / k->K;
  } else {
    B = X->dims[0];
    for (size_t i = 2; i < X->rank; ++i) P *= X->dims[i];
    M = B;
  }
  if (k->op == OP_MATMUL || P == 1) { /* rows of K: [M, K] -> [M, N] */
    if (M < k->spmm_min_m) return rows_m1(ctx, k, w, x, bias, y, M);
    if (use_nm24_rows(k, M)) return nm24_rows_job(ctx, k, w, x, bias, y, M);
    int64_t ld = (M + 15) / 16 * 16;
    float* xt = scratch((size_t)(k->K + k->N) * ld);
    if (!xt) return gp_err(GP_ORT_FAIL, "%s: out of memory", op);
    float* yt = xt + k->K * ld;
    transpose(x, M, k->K, k->K, xt, ld);
    return spmm(ctx, k, w, xt, ld, bias, yt, ld, M, 1, 0, 0, y);
  }
  if (use_nm24_rows(k, P)) { /* 2:4: each image transposed to rows of K, the 2:4 row loop, back */
    float* xs = scratch((size_t)(k->K + k->N) * P);
    if (!xs) return gp_err(GP_ORT_FAIL, "%s: out of memory", op);
    float* ys = xs + k->K * P;
    for (int64_t b = 0; b < B; ++b) {
      transpose(x + b * k->K * P, k->K, P, P, xs, k->K);
      TRY(nm24_rows_job(ctx, k, w, xs, bias, ys, P));
      transpose(ys, P, k->N, k->N, y + b * k->N * P, P);
    }
    return NULL;
  }
  /* pointwise conv: each image is already [K][P], the transposed layout */
  return spmm(ctx, k, w, x, P, bias, y, P, P, B, k->K * P, k->N * P, NULL);
}

static OrtStatus* compute_v2(void* kp, OrtKernelContext* ctx) { return compute(kp, ctx); }

/* ------------------------------------------------------------------ registration */

#define GP_OP(NAME_FN, CREATE_FN)                                                                          \
  {                                                                                                        \
    GP_ORT_API_VERSION, NULL, NAME_FN, ep_cpu, input_type, input_count, output_type, output_count, NULL,  \
        kernel_destroy, required, required, mem_default, one, zero, one, zero, CREATE_FN, compute_v2, NULL, \
        one, end_version, NULL, NULL, NULL, NULL                                                          \
  }

static GpOrtCustomOp g_matmul_op = GP_OP(name_matmul, create_matmul);
static GpOrtCustomOp g_conv_op = GP_OP(name_conv, create_conv);
static OrtCustomOpDomain* g_domain;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

/* Which instruction set the kernels will use on this CPU (for tools and logs). */
GP_EXPORT const char* GraphpruneKernelsInfo(void) {
  static char buf[128];
#ifdef GP_WITH_CUDA
  snprintf(buf, sizeof buf, "isa=%s api=%d cuda=yes", choose_isa()->name, GP_ORT_API_VERSION);
#else
  snprintf(buf, sizeof buf, "isa=%s api=%d", choose_isa()->name, GP_ORT_API_VERSION);
#endif
  return buf;
}

GP_EXPORT OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(GP_ORT_API_VERSION);
  if (!api) {
    int have = 0;
    const OrtApi* old = NULL;
    for (int v = GP_ORT_API_VERSION - 1; v >= 1 && v > GP_ORT_API_VERSION - 4096; --v)
      if ((old = base->GetApi((uint32_t)v))) {
        have = v;
        break;
      }
    if (!old) return NULL; /* no table at all: nothing can even report the error */
    char msg[512];
    snprintf(msg, sizeof msg,
             "graphprune kernels need onnxruntime C API version %d (onnxruntime >= 1.%d), but this onnxruntime "
             "(%s) provides API version %d; upgrade onnxruntime",
             GP_ORT_API_VERSION, GP_ORT_API_VERSION, base->GetVersionString(), have);
    return ((gp_CreateStatus_fn)((void* const*)old)[GP_SLOT_CreateStatus])(GP_ORT_FAIL, msg);
  }
  pthread_mutex_lock(&g_lock);
  g_api = api;
  OrtStatus* st = NULL;
  if (!g_domain) {
    OrtCustomOpDomain* d = NULL;
    st = GP_API(api, CreateCustomOpDomain)(GP_DOMAIN, &d);
    if (!st) st = GP_API(api, CustomOpDomain_Add)(d, &g_matmul_op);
    if (!st) st = GP_API(api, CustomOpDomain_Add)(d, &g_conv_op);
#ifdef GP_WITH_CUDA /* the CUDA library: the same ops for CUDAExecutionProvider, beside the CPU ones */
    const void* cuda_ops[4];
    int n_cuda = gp_cuda_ops(cuda_ops, 4);
    for (int i = 0; i < n_cuda && !st; ++i) st = GP_API(api, CustomOpDomain_Add)(d, cuda_ops[i]);
#endif
    if (!st) g_domain = d; /* lives as long as the process: sessions may outlive any one registration */
  }
  if (!st) st = GP_API(api, AddCustomOpDomain)(options, g_domain);
  pthread_mutex_unlock(&g_lock);
  return st;
}

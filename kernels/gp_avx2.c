/* graphprune kernels: AVX2 + FMA versions (8 outputs per slice). Compiled for AVX2 whatever the build
 * machine; only called when the CPU reports avx2 and fma (gp_ops.c). The kernels both vector widths share
 * are in gp_simd.h, written over the operations defined here. */
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <string.h>

#define GP_W 8  /* floats per vector */
#define GP_MR 4 /* 2:4 rows per pass: 4 x 2 accumulators + weights and indices in 16 ymm registers */
typedef __m256 gp_v;
typedef __m256i gp_vi;
typedef __m256i gp_mask;
#include "gp_simd.h"

static inline gp_v v_zero(void) { return _mm256_setzero_ps(); }
static inline gp_v v_set1(float f) { return _mm256_set1_ps(f); }
static inline gp_v v_load(const float* p) { return _mm256_loadu_ps(p); }
static inline void v_store(float* p, gp_v v) { _mm256_storeu_ps(p, v); }
static inline gp_v v_add(gp_v a, gp_v b) { return _mm256_add_ps(a, b); }
static inline gp_v v_fma(gp_v a, gp_v b, gp_v c) { return _mm256_fmadd_ps(a, b, c); }
static inline gp_v v_gather(const float* x, const uint16_t* i) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(gather4(x, i)), gather4(x, i + 4), 1);
}
static inline gp_v v_bcast4(const float* p) { return _mm256_broadcast_ps((const __m128*)p); }
static inline gp_vi v_nm24_idx(uint32_t bits) {
  return _mm256_srlv_epi32(_mm256_set1_epi32((int)bits), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
}
static inline gp_v v_permute(gp_v x, gp_vi c) { return _mm256_permutevar_ps(x, c); }
static inline gp_mask v_mask(int64_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n)), lanes);
}
static inline gp_v v_maskload(const float* p, gp_mask m) { return _mm256_maskload_ps(p, m); }
static inline void v_maskstore(float* p, gp_mask m, gp_v v) { _mm256_maskstore_ps(p, m, v); }
static inline gp_v v_load_part(const float* b, int64_t n) {
  if (n >= 8) return _mm256_loadu_ps(b);
  float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  memcpy(t, b, (size_t)n * sizeof(float));
  return _mm256_loadu_ps(t);
}
static inline void v_store_part(float* y, gp_v r, int64_t n) {
  if (n >= 8) {
    _mm256_storeu_ps(y, r);
  } else {
    float t[8];
    _mm256_storeu_ps(t, r);
    memcpy(y, t, (size_t)n * sizeof(float));
  }
}

static void blkn_m1(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1) {
  const int bn = p->bn;
  if (bn != 8 && bn != 16) {
    gp_portable_blkn_m1(p, x, bias, y, s0, s1);
    return;
  }
  for (int64_t c = s0; c < s1; ++c) {
    const int64_t e0 = p->sptr[c], L = p->sptr[c + 1] - e0;
    const float* v = p->val + e0 * bn;
    const uint16_t* ix = p->idx + e0;
    if (bn == 8) {
      int64_t nv = p->N - c * 8;
      v_store_part(y + c * 8, _mm256_add_ps(blkn8_sum(x, v, ix, L), v_load_part(bias + c * 8, nv)), nv);
    } else {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      int64_t t = 0;
      for (; t + 2 <= L; t += 2) {
        __m256 x0 = _mm256_set1_ps(x[ix[t]]), x1 = _mm256_set1_ps(x[ix[t + 1]]);
        a0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(v + t * 16), a0);
        a1 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(v + t * 16 + 8), a1);
        a2 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(v + t * 16 + 16), a2);
        a3 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(v + t * 16 + 24), a3);
      }
      if (t < L) {
        __m256 x0 = _mm256_set1_ps(x[ix[t]]);
        a0 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(v + t * 16), a0);
        a1 = _mm256_fmadd_ps(x0, _mm256_loadu_ps(v + t * 16 + 8), a1);
      }
      int64_t nv = p->N - c * 16;
      v_store_part(y + c * 16, _mm256_add_ps(_mm256_add_ps(a0, a2), v_load_part(bias + c * 16, nv)), nv);
      if (nv > 8) v_store_part(y + c * 16 + 8, _mm256_add_ps(_mm256_add_ps(a1, a3), v_load_part(bias + c * 16 + 8, nv - 8)), nv - 8);
    }
  }
}

static void csr_m1(const gp_csr* w, const float* x, const float* bias, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int64_t j = w->ptr[n], e = w->ptr[n + 1];
    __m256 a = _mm256_setzero_ps();
    for (; j + 8 <= e; j += 8) {
      __m256i i = _mm256_loadu_si256((const __m256i*)(w->idx + j));
      a = _mm256_fmadd_ps(_mm256_loadu_ps(w->val + j), _mm256_i32gather_ps(x, i, 4), a);
    }
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float acc = _mm_cvtss_f32(h);
    for (; j < e; ++j) acc += w->val[j] * x[w->idx[j]];
    y[n] = bias[n] + acc;
  }
}

const gp_isa gp_isa_avx2 = {"avx2", 8, sell_m1, nm24_m1, blkn_m1, csr_m1, spmm_t_4x, nm24_mr, 1 << 30};

/* graphprune kernels: AVX2 + FMA versions (8 outputs per slice). Compiled for AVX2 whatever the build
 * machine; only called when the CPU reports avx2 and fma (gp_ops.c). */
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <string.h>

#include "gp_kernels.h"

#ifndef GP_PF
#define GP_PF 32 /* software prefetch distance (in 64-byte steps of the value stream, roughly) */
#endif

static inline void store_part(float* y, __m256 r, int64_t n) {
  if (n >= 8) {
    _mm256_storeu_ps(y, r);
  } else {
    float t[8];
    _mm256_storeu_ps(t, r);
    memcpy(y, t, (size_t)n * sizeof(float));
  }
}
static inline __m256 load_part(const float* b, int64_t n) {
  if (n >= 8) return _mm256_loadu_ps(b);
  float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  memcpy(t, b, (size_t)n * sizeof(float));
  return _mm256_loadu_ps(t);
}
static inline __m256i lane_mask(int64_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n)), lanes);
}

static inline __m256 gather8(const float* x, const uint16_t* i) {
  uint64_t w0, w1; /* two 64-bit loads carry the 8 indices (this loop is load-bound) */
  memcpy(&w0, i, 8);
  memcpy(&w1, i + 4, 8);
#define GP_X(w, s) x[(uint16_t)((w) >> (s))]
  __m128 q0 = _mm_setr_ps(GP_X(w0, 0), GP_X(w0, 16), GP_X(w0, 32), GP_X(w0, 48));
  __m128 q1 = _mm_setr_ps(GP_X(w1, 0), GP_X(w1, 16), GP_X(w1, 32), GP_X(w1, 48));
#undef GP_X
  return _mm256_insertf128_ps(_mm256_castps128_ps256(q0), q1, 1);
}

/* sliced ELL: per step, 8 values, 8 uint16 indices, 8 x loads; lanes map to outputs through perm */
static void sell_m1(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1) {
  for (int64_t s = s0; s < s1; ++s) {
    const float* v = p->val + p->sptr[s] * 8;
    const uint16_t* ix = p->idx + p->sptr[s] * 8;
    const int64_t L = p->sptr[s + 1] - p->sptr[s];
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 2 <= L; t += 2) {
      _mm_prefetch((const char*)(v + t * 8 + GP_PF * 16), _MM_HINT_T0);
      _mm_prefetch((const char*)(ix + t * 8 + GP_PF * 16), _MM_HINT_T0);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + t * 8), gather8(x, ix + t * 8), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + t * 8 + 8), gather8(x, ix + t * 8 + 8), a1);
    }
    if (t < L) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + t * 8), gather8(x, ix + t * 8), a0);
    float r[8];
    _mm256_storeu_ps(r, _mm256_add_ps(a0, a1));
    const int32_t* perm = p->perm + s * 8;
    for (int l = 0; l < 8; ++l)
      if (perm[l] >= 0) y[perm[l]] = r[l] + bias[perm[l]];
  }
}

static void nm24_m1(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1) {
  const int64_t G = p->groups, Gfull = p->K / 4;
  const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  float xtail[4] = {0, 0, 0, 0};
  if (G > Gfull) memcpy(xtail, x + Gfull * 4, (size_t)(p->K - Gfull * 4) * sizeof(float));
  for (int64_t s = s0; s < s1; ++s) {
    const float* v = p->val + s * G * 16;
    const uint32_t* b = p->bits + s * G * 2;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= Gfull; g += 2) {
      _mm_prefetch((const char*)(v + g * 16 + GP_PF * 32), _MM_HINT_T0);
      _mm_prefetch((const char*)(v + g * 16 + GP_PF * 32 + 16), _MM_HINT_T0);
      _mm_prefetch((const char*)(b + 2 * g + GP_PF * 4), _MM_HINT_T0);
      __m256 xb0 = _mm256_broadcast_ps((const __m128*)(x + 4 * g));
      __m256 xb1 = _mm256_broadcast_ps((const __m128*)(x + 4 * g + 4));
      __m256i c0 = _mm256_srlv_epi32(_mm256_set1_epi32((int)b[2 * g]), sh);
      __m256i c1 = _mm256_srlv_epi32(_mm256_set1_epi32((int)b[2 * g + 1]), sh);
      __m256i c2 = _mm256_srlv_epi32(_mm256_set1_epi32((int)b[2 * g + 2]), sh);
      __m256i c3 = _mm256_srlv_epi32(_mm256_set1_epi32((int)b[2 * g + 3]), sh);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + g * 16), _mm256_permutevar_ps(xb0, c0), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + g * 16 + 8), _mm256_permutevar_ps(xb0, c1), a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(v + g * 16 + 16), _mm256_permutevar_ps(xb1, c2), a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(v + g * 16 + 24), _mm256_permutevar_ps(xb1, c3), a3);
    }
    for (; g < G; ++g) {
      const float* xg = g < Gfull ? x + 4 * g : xtail;
      __m256 xb = _mm256_broadcast_ps((const __m128*)xg);
      __m256i c0 = _mm256_srlv_epi32(_mm256_set1_epi32((int)b[2 * g]), sh);
      __m256i c1 = _mm256_srlv_epi32(_mm256_set1_epi32((int)b[2 * g + 1]), sh);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + g * 16), _mm256_permutevar_ps(xb, c0), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + g * 16 + 8), _mm256_permutevar_ps(xb, c1), a1);
    }
    int64_t nv = p->N - s * 8;
    __m256 r = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    store_part(y + s * 8, _mm256_add_ps(r, load_part(bias + s * 8, nv)), nv);
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
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      int64_t t = 0;
      for (; t + 4 <= L; t += 4) {
        _mm_prefetch((const char*)(v + t * 8 + GP_PF * 16), _MM_HINT_T0);
        _mm_prefetch((const char*)(v + t * 8 + GP_PF * 16 + 16), _MM_HINT_T0);
        _mm_prefetch((const char*)(ix + t + GP_PF * 2), _MM_HINT_T0);
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(x[ix[t]]), _mm256_loadu_ps(v + t * 8), a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(x[ix[t + 1]]), _mm256_loadu_ps(v + t * 8 + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_set1_ps(x[ix[t + 2]]), _mm256_loadu_ps(v + t * 8 + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_set1_ps(x[ix[t + 3]]), _mm256_loadu_ps(v + t * 8 + 24), a3);
      }
      for (; t < L; ++t) a0 = _mm256_fmadd_ps(_mm256_set1_ps(x[ix[t]]), _mm256_loadu_ps(v + t * 8), a0);
      int64_t nv = p->N - c * 8;
      __m256 r = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
      store_part(y + c * 8, _mm256_add_ps(r, load_part(bias + c * 8, nv)), nv);
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
      store_part(y + c * 16, _mm256_add_ps(_mm256_add_ps(a0, a2), load_part(bias + c * 16, nv)), nv);
      if (nv > 8) store_part(y + c * 16 + 8, _mm256_add_ps(_mm256_add_ps(a1, a3), load_part(bias + c * 16 + 8, nv - 8)), nv - 8);
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

static void spmm_t(const gp_csr* w, const float* xt, int64_t ldx, const float* bias, float* yt, int64_t ldy,
                   int64_t n0, int64_t n1, int64_t m0, int64_t m1) {
  int64_t mb = m0;
  for (; mb + 32 <= m1; mb += 32) {
    for (int64_t n = n0; n < n1; ++n) {
      __m256 a0 = _mm256_set1_ps(bias[n]), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t j = w->ptr[n]; j < w->ptr[n + 1]; ++j) {
        const __m256 vb = _mm256_set1_ps(w->val[j]);
        const float* r = xt + (int64_t)w->idx[j] * ldx + mb;
        a0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r), a0);
        a1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r + 8), a1);
        a2 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r + 16), a2);
        a3 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(r + 24), a3);
      }
      float* o = yt + n * ldy + mb;
      _mm256_storeu_ps(o, a0);
      _mm256_storeu_ps(o + 8, a1);
      _mm256_storeu_ps(o + 16, a2);
      _mm256_storeu_ps(o + 24, a3);
    }
  }
  for (; mb < m1; mb += 8) {
    const __m256i m = lane_mask(m1 - mb);
    for (int64_t n = n0; n < n1; ++n) {
      __m256 a0 = _mm256_set1_ps(bias[n]), a1 = _mm256_setzero_ps(), a2 = a1, a3 = a1;
      const float* xb = xt + mb;
      int64_t j = w->ptr[n], e = w->ptr[n + 1];
      for (; j + 4 <= e; j += 4) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(w->val[j]), _mm256_maskload_ps(xb + (int64_t)w->idx[j] * ldx, m), a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(w->val[j + 1]), _mm256_maskload_ps(xb + (int64_t)w->idx[j + 1] * ldx, m), a1);
        a2 = _mm256_fmadd_ps(_mm256_set1_ps(w->val[j + 2]), _mm256_maskload_ps(xb + (int64_t)w->idx[j + 2] * ldx, m), a2);
        a3 = _mm256_fmadd_ps(_mm256_set1_ps(w->val[j + 3]), _mm256_maskload_ps(xb + (int64_t)w->idx[j + 3] * ldx, m), a3);
      }
      for (; j < e; ++j)
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(w->val[j]), _mm256_maskload_ps(xb + (int64_t)w->idx[j] * ldx, m), a0);
      _mm256_maskstore_ps(yt + n * ldy + mb, m, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    }
  }
}

/* 2:4 for R <= 4 rows at once (16 ymm registers): weights and index vectors loaded once for all rows */
static inline __attribute__((always_inline)) void nm24_rows(const gp_packed* p, const float* x, int64_t ldx,
                                                            const int R, const float* bias, float* y, int64_t ldy,
                                                            int64_t s0, int64_t s1) {
  const int64_t G = p->groups, Gfull = p->K / 4;
  const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  float xtail[4][4];
  memset(xtail, 0, sizeof xtail);
  if (G > Gfull)
    for (int i = 0; i < R; ++i) memcpy(xtail[i], x + i * ldx + Gfull * 4, (size_t)(p->K - Gfull * 4) * sizeof(float));
  for (int64_t s = s0; s < s1; ++s) {
    const float* v = p->val + s * G * 16;
    const uint32_t* b = p->bits + s * G * 2;
    __m256 a0[4], a1[4];
    for (int i = 0; i < R; ++i) a0[i] = a1[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      _mm_prefetch((const char*)(v + g * 16 + GP_PF * 32), _MM_HINT_T0);
      const __m256 v0 = _mm256_loadu_ps(v + g * 16), v1 = _mm256_loadu_ps(v + g * 16 + 8);
      const __m256i c0 = _mm256_srlv_epi32(_mm256_set1_epi32((int)b[2 * g]), sh);
      const __m256i c1 = _mm256_srlv_epi32(_mm256_set1_epi32((int)b[2 * g + 1]), sh);
      for (int i = 0; i < R; ++i) {
        const __m256 xb = _mm256_broadcast_ps((const __m128*)(g < Gfull ? x + i * ldx + 4 * g : xtail[i]));
        a0[i] = _mm256_fmadd_ps(v0, _mm256_permutevar_ps(xb, c0), a0[i]);
        a1[i] = _mm256_fmadd_ps(v1, _mm256_permutevar_ps(xb, c1), a1[i]);
      }
    }
    int64_t nv = p->N - s * 8;
    const __m256 bb = load_part(bias + s * 8, nv);
    for (int i = 0; i < R; ++i) store_part(y + i * ldy + s * 8, _mm256_add_ps(_mm256_add_ps(a0[i], a1[i]), bb), nv);
  }
}

static void nm24_mr(const gp_packed* p, const float* x, int64_t ldx, int64_t rows, const float* bias, float* y,
                    int64_t ldy, int64_t s0, int64_t s1) {
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const float* xr = x + r0 * ldx;
    float* yr = y + r0 * ldy;
    switch (rows - r0 >= 4 ? 4 : (int)(rows - r0)) {
      case 4: nm24_rows(p, xr, ldx, 4, bias, yr, ldy, s0, s1); break;
      case 3: nm24_rows(p, xr, ldx, 3, bias, yr, ldy, s0, s1); break;
      case 2: nm24_rows(p, xr, ldx, 2, bias, yr, ldy, s0, s1); break;
      default: nm24_rows(p, xr, ldx, 1, bias, yr, ldy, s0, s1); break;
    }
  }
}

const gp_isa gp_isa_avx2 = {"avx2", 8, sell_m1, nm24_m1, blkn_m1, csr_m1, spmm_t, nm24_mr, 1 << 30};

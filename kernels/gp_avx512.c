/* graphprune kernels: AVX-512 versions (16 outputs per slice). Compiled for AVX-512 whatever the
 * build machine; only called when the CPU reports avx512f/bw/vl/dq (gp_ops.c). */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#include <immintrin.h>
#include <string.h>

#include "gp_kernels.h"

#ifndef GP_PF
#define GP_PF 32 /* prefetch distance in steps of 16 values */
#endif

static inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

/* 16 x values at 16 uint16 indices: scalar loads and inserts (faster than vgatherdps on the AMD
 * Zen 4/5 cores measured here, and no slower on Intel) */
static inline __m512 gather16(const float* x, const uint16_t* i) {
  /* four 64-bit loads carry the 16 indices (fewer loads: this loop is load-bound) */
  uint64_t w0, w1, w2, w3;
  memcpy(&w0, i, 8);
  memcpy(&w1, i + 4, 8);
  memcpy(&w2, i + 8, 8);
  memcpy(&w3, i + 12, 8);
#define GP_X(w, s) x[(uint16_t)((w) >> (s))]
  __m128 q0 = _mm_setr_ps(GP_X(w0, 0), GP_X(w0, 16), GP_X(w0, 32), GP_X(w0, 48));
  __m128 q1 = _mm_setr_ps(GP_X(w1, 0), GP_X(w1, 16), GP_X(w1, 32), GP_X(w1, 48));
  __m128 q2 = _mm_setr_ps(GP_X(w2, 0), GP_X(w2, 16), GP_X(w2, 32), GP_X(w2, 48));
  __m128 q3 = _mm_setr_ps(GP_X(w3, 0), GP_X(w3, 16), GP_X(w3, 32), GP_X(w3, 48));
#undef GP_X
  return _mm512_insertf32x4(_mm512_insertf32x4(_mm512_insertf32x4(_mm512_castps128_ps512(q0), q1, 1), q2, 2), q3, 3);
}

/* sliced ELL: per step, 16 values, 16 uint16 indices, 16 x loads; lanes map to outputs through perm */
static void sell_m1(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1) {
  for (int64_t s = s0; s < s1; ++s) {
    const float* v = p->val + p->sptr[s] * 16;
    const uint16_t* ix = p->idx + p->sptr[s] * 16;
    const int64_t L = p->sptr[s + 1] - p->sptr[s];
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t t = 0;
    for (; t + 2 <= L; t += 2) {
      /* software prefetch ~2 KB ahead: the x loads fill the load queue, so the hardware prefetcher
       * alone keeps too few memory requests in flight (measured: 1.4-2x slower without) */
      _mm_prefetch((const char*)(v + t * 16 + GP_PF * 16), _MM_HINT_T0);
      _mm_prefetch((const char*)(v + t * 16 + GP_PF * 16 + 16), _MM_HINT_T0);
      _mm_prefetch((const char*)(ix + t * 16 + GP_PF * 16), _MM_HINT_T0);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + t * 16), gather16(x, ix + t * 16), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + t * 16 + 16), gather16(x, ix + t * 16 + 16), a1);
    }
    if (t < L) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + t * 16), gather16(x, ix + t * 16), a0);
    float r[16];
    _mm512_storeu_ps(r, _mm512_add_ps(a0, a1));
    const int32_t* perm = p->perm + s * 16;
    for (int l = 0; l < 16; ++l)
      if (perm[l] >= 0) y[perm[l]] = r[l] + bias[perm[l]];
  }
}

/* 2:4 along K: per group of 4 k, x[4g..4g+3] is broadcast to every 128-bit lane and each output lane
 * picks its two values with an in-lane permute driven by its 2-bit indices. */
static void nm24_m1(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1) {
  const int64_t G = p->groups, Gfull = p->K / 4;
  const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  float xtail[4] = {0, 0, 0, 0};
  if (G > Gfull) memcpy(xtail, x + Gfull * 4, (size_t)(p->K - Gfull * 4) * sizeof(float));
  for (int64_t s = s0; s < s1; ++s) {
    const float* v = p->val + s * G * 32;
    const uint32_t* b = p->bits + s * G * 2;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= Gfull; g += 2) {
      const float* pf = v + g * 32 + GP_PF * 32;
      _mm_prefetch((const char*)pf, _MM_HINT_T0);
      _mm_prefetch((const char*)(pf + 16), _MM_HINT_T0);
      _mm_prefetch((const char*)(pf + 32), _MM_HINT_T0);
      _mm_prefetch((const char*)(pf + 48), _MM_HINT_T0);
      _mm_prefetch((const char*)(b + 2 * g + GP_PF * 2), _MM_HINT_T0);
      __m512 xb0 = _mm512_broadcast_f32x4(_mm_loadu_ps(x + 4 * g));
      __m512 xb1 = _mm512_broadcast_f32x4(_mm_loadu_ps(x + 4 * g + 4));
      __m512i c0 = _mm512_srlv_epi32(_mm512_set1_epi32((int)b[2 * g]), sh);
      __m512i c1 = _mm512_srlv_epi32(_mm512_set1_epi32((int)b[2 * g + 1]), sh);
      __m512i c2 = _mm512_srlv_epi32(_mm512_set1_epi32((int)b[2 * g + 2]), sh);
      __m512i c3 = _mm512_srlv_epi32(_mm512_set1_epi32((int)b[2 * g + 3]), sh);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + g * 32), _mm512_permutevar_ps(xb0, c0), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + g * 32 + 16), _mm512_permutevar_ps(xb0, c1), a1);
      a2 = _mm512_fmadd_ps(_mm512_loadu_ps(v + g * 32 + 32), _mm512_permutevar_ps(xb1, c2), a2);
      a3 = _mm512_fmadd_ps(_mm512_loadu_ps(v + g * 32 + 48), _mm512_permutevar_ps(xb1, c3), a3);
    }
    for (; g < G; ++g) {
      const float* xg = g < Gfull ? x + 4 * g : xtail;
      __m512 xb = _mm512_broadcast_f32x4(_mm_loadu_ps(xg));
      __m512i c0 = _mm512_srlv_epi32(_mm512_set1_epi32((int)b[2 * g]), sh);
      __m512i c1 = _mm512_srlv_epi32(_mm512_set1_epi32((int)b[2 * g + 1]), sh);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(v + g * 32), _mm512_permutevar_ps(xb, c0), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(v + g * 32 + 16), _mm512_permutevar_ps(xb, c1), a1);
    }
    __mmask16 m = tail_mask(p->N - s * 16);
    __m512 r = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, bias + s * 16));
    _mm512_mask_storeu_ps(y + s * 16, m, r);
  }
}

/* blocks of bn outputs sharing k: broadcast x[k], multiply-add a row of bn values */
static void blkn_m1(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1) {
  const int bn = p->bn;
  if (bn != 16 && bn != 8 && bn != 4) {
    gp_portable_blkn_m1(p, x, bias, y, s0, s1);
    return;
  }
  for (int64_t c = s0; c < s1; ++c) {
    const int64_t e0 = p->sptr[c], e1 = p->sptr[c + 1];
    const float* v = p->val + e0 * bn;
    const uint16_t* ix = p->idx + e0;
    const int64_t L = e1 - e0;
    __mmask16 m = tail_mask(p->N - c * bn);
    if (bn == 16) {
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      int64_t t = 0;
      for (; t + 2 <= L; t += 2) {
        _mm_prefetch((const char*)(v + t * 16 + GP_PF * 16), _MM_HINT_T0);
        _mm_prefetch((const char*)(v + t * 16 + GP_PF * 16 + 16), _MM_HINT_T0);
        _mm_prefetch((const char*)(ix + t + GP_PF * 2), _MM_HINT_T0);
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(x[ix[t]]), _mm512_loadu_ps(v + t * 16), a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(x[ix[t + 1]]), _mm512_loadu_ps(v + t * 16 + 16), a1);
      }
      if (t < L) a0 = _mm512_fmadd_ps(_mm512_set1_ps(x[ix[t]]), _mm512_loadu_ps(v + t * 16), a0);
      __m512 r = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_maskz_loadu_ps(m, bias + c * 16));
      _mm512_mask_storeu_ps(y + c * 16, m, r);
    } else if (bn == 8) {
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
      __m256 r = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
      r = _mm256_add_ps(r, _mm256_maskz_loadu_ps((__mmask8)m, bias + c * 8));
      _mm256_mask_storeu_ps(y + c * 8, (__mmask8)m, r);
    } else {
      __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps(), a2 = _mm_setzero_ps(), a3 = _mm_setzero_ps();
      int64_t t = 0;
      for (; t + 4 <= L; t += 4) {
        a0 = _mm_fmadd_ps(_mm_set1_ps(x[ix[t]]), _mm_loadu_ps(v + t * 4), a0);
        a1 = _mm_fmadd_ps(_mm_set1_ps(x[ix[t + 1]]), _mm_loadu_ps(v + t * 4 + 4), a1);
        a2 = _mm_fmadd_ps(_mm_set1_ps(x[ix[t + 2]]), _mm_loadu_ps(v + t * 4 + 8), a2);
        a3 = _mm_fmadd_ps(_mm_set1_ps(x[ix[t + 3]]), _mm_loadu_ps(v + t * 4 + 12), a3);
      }
      for (; t < L; ++t) a0 = _mm_fmadd_ps(_mm_set1_ps(x[ix[t]]), _mm_loadu_ps(v + t * 4), a0);
      __m128 r = _mm_add_ps(_mm_add_ps(a0, a1), _mm_add_ps(a2, a3));
      r = _mm_add_ps(r, _mm_maskz_loadu_ps((__mmask8)(m & 0xF), bias + c * 4));
      _mm_mask_storeu_ps(y + c * 4, (__mmask8)(m & 0xF), r);
    }
  }
}

static void csr_m1(const gp_csr* w, const float* x, const float* bias, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int64_t j = w->ptr[n], e = w->ptr[n + 1];
    __m512 a = _mm512_setzero_ps();
    for (; j + 16 <= e; j += 16) {
      __m512i i = _mm512_loadu_si512(w->idx + j);
      a = _mm512_fmadd_ps(_mm512_loadu_ps(w->val + j), _mm512_i32gather_ps(i, x, 4), a);
    }
    if (j < e) {
      __mmask16 m = tail_mask(e - j);
      __m512i i = _mm512_maskz_loadu_epi32(m, w->idx + j);
      __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, i, x, 4);
      a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w->val + j), g, a);
    }
    y[n] = bias[n] + _mm512_reduce_add_ps(a);
  }
}

/* many rows: xt is [K][ldx] (rows contiguous), each weight is loaded once per 64 rows */
static void spmm_t(const gp_csr* w, const float* xt, int64_t ldx, const float* bias, float* yt, int64_t ldy,
                   int64_t n0, int64_t n1, int64_t m0, int64_t m1) {
  int64_t mb = m0;
  for (; mb + 128 <= m1; mb += 128) { /* 8 chains: both FMA pipes busy, index/value loads amortized */
    for (int64_t n = n0; n < n1; ++n) {
      __m512 a[8];
      for (int i = 0; i < 8; ++i) a[i] = _mm512_set1_ps(bias[n]);
      for (int64_t j = w->ptr[n]; j < w->ptr[n + 1]; ++j) {
        const __m512 vb = _mm512_set1_ps(w->val[j]);
        const float* r = xt + (int64_t)w->idx[j] * ldx + mb;
        for (int i = 0; i < 8; ++i) a[i] = _mm512_fmadd_ps(vb, _mm512_loadu_ps(r + 16 * i), a[i]);
      }
      float* o = yt + n * ldy + mb;
      for (int i = 0; i < 8; ++i) _mm512_storeu_ps(o + 16 * i, a[i]);
    }
  }
  for (; mb + 64 <= m1; mb += 64) {
    for (int64_t n = n0; n < n1; ++n) {
      __m512 a0 = _mm512_set1_ps(bias[n]), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t j = w->ptr[n]; j < w->ptr[n + 1]; ++j) {
        const __m512 vb = _mm512_set1_ps(w->val[j]);
        const float* r = xt + (int64_t)w->idx[j] * ldx + mb;
        a0 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(r), a0);
        a1 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(r + 16), a1);
        a2 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(r + 32), a2);
        a3 = _mm512_fmadd_ps(vb, _mm512_loadu_ps(r + 48), a3);
      }
      float* o = yt + n * ldy + mb;
      _mm512_storeu_ps(o, a0);
      _mm512_storeu_ps(o + 16, a1);
      _mm512_storeu_ps(o + 32, a2);
      _mm512_storeu_ps(o + 48, a3);
    }
  }
  for (; mb < m1; mb += 16) {
    __mmask16 m = tail_mask(m1 - mb);
    for (int64_t n = n0; n < n1; ++n) {
      /* four independent chains over the nonzeros hide the FMA latency */
      __m512 a0 = _mm512_set1_ps(bias[n]), a1 = _mm512_setzero_ps(), a2 = a1, a3 = a1;
      const float* xb = xt + mb;
      int64_t j = w->ptr[n], e = w->ptr[n + 1];
      for (; j + 4 <= e; j += 4) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(w->val[j]), _mm512_maskz_loadu_ps(m, xb + (int64_t)w->idx[j] * ldx), a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(w->val[j + 1]), _mm512_maskz_loadu_ps(m, xb + (int64_t)w->idx[j + 1] * ldx),
                             a1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(w->val[j + 2]), _mm512_maskz_loadu_ps(m, xb + (int64_t)w->idx[j + 2] * ldx),
                             a2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(w->val[j + 3]), _mm512_maskz_loadu_ps(m, xb + (int64_t)w->idx[j + 3] * ldx),
                             a3);
      }
      for (; j < e; ++j)
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(w->val[j]), _mm512_maskz_loadu_ps(m, xb + (int64_t)w->idx[j] * ldx), a0);
      _mm512_mask_storeu_ps(yt + n * ldy + mb, m, _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    }
  }
}

/* 2:4 for R <= 8 rows at once: the packed weights and their index vectors are loaded once for all rows */
static inline __attribute__((always_inline)) void nm24_rows(const gp_packed* p, const float* x, int64_t ldx,
                                                            const int R, const float* bias, float* y, int64_t ldy,
                                                            int64_t s0, int64_t s1) {
  const int64_t G = p->groups, Gfull = p->K / 4;
  const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  float xtail[8][4];
  memset(xtail, 0, sizeof xtail);
  if (G > Gfull)
    for (int i = 0; i < R; ++i) memcpy(xtail[i], x + i * ldx + Gfull * 4, (size_t)(p->K - Gfull * 4) * sizeof(float));
  for (int64_t s = s0; s < s1; ++s) {
    const float* v = p->val + s * G * 32;
    const uint32_t* b = p->bits + s * G * 2;
    __m512 a0[8], a1[8];
    for (int i = 0; i < R; ++i) a0[i] = a1[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      _mm_prefetch((const char*)(v + g * 32 + GP_PF * 32), _MM_HINT_T0);
      _mm_prefetch((const char*)(v + g * 32 + GP_PF * 32 + 16), _MM_HINT_T0);
      const __m512 v0 = _mm512_loadu_ps(v + g * 32), v1 = _mm512_loadu_ps(v + g * 32 + 16);
      const __m512i c0 = _mm512_srlv_epi32(_mm512_set1_epi32((int)b[2 * g]), sh);
      const __m512i c1 = _mm512_srlv_epi32(_mm512_set1_epi32((int)b[2 * g + 1]), sh);
      for (int i = 0; i < R; ++i) {
        const __m512 xb = _mm512_broadcast_f32x4(_mm_loadu_ps(g < Gfull ? x + i * ldx + 4 * g : xtail[i]));
        a0[i] = _mm512_fmadd_ps(v0, _mm512_permutevar_ps(xb, c0), a0[i]);
        a1[i] = _mm512_fmadd_ps(v1, _mm512_permutevar_ps(xb, c1), a1[i]);
      }
    }
    __mmask16 m = tail_mask(p->N - s * 16);
    const __m512 bb = _mm512_maskz_loadu_ps(m, bias + s * 16);
    for (int i = 0; i < R; ++i)
      _mm512_mask_storeu_ps(y + i * ldy + s * 16, m, _mm512_add_ps(_mm512_add_ps(a0[i], a1[i]), bb));
  }
}

static void nm24_mr(const gp_packed* p, const float* x, int64_t ldx, int64_t rows, const float* bias, float* y,
                    int64_t ldy, int64_t s0, int64_t s1) {
  for (int64_t r0 = 0; r0 < rows; r0 += 8) {
    const float* xr = x + r0 * ldx;
    float* yr = y + r0 * ldy;
    switch (rows - r0 >= 8 ? 8 : (int)(rows - r0)) {
      case 8: nm24_rows(p, xr, ldx, 8, bias, yr, ldy, s0, s1); break;
      case 7: nm24_rows(p, xr, ldx, 7, bias, yr, ldy, s0, s1); break;
      case 6: nm24_rows(p, xr, ldx, 6, bias, yr, ldy, s0, s1); break;
      case 5: nm24_rows(p, xr, ldx, 5, bias, yr, ldy, s0, s1); break;
      case 4: nm24_rows(p, xr, ldx, 4, bias, yr, ldy, s0, s1); break;
      case 3: nm24_rows(p, xr, ldx, 3, bias, yr, ldy, s0, s1); break;
      case 2: nm24_rows(p, xr, ldx, 2, bias, yr, ldy, s0, s1); break;
      default: nm24_rows(p, xr, ldx, 1, bias, yr, ldy, s0, s1); break;
    }
  }
}

const gp_isa gp_isa_avx512 = {"avx512", 16, sell_m1, nm24_m1, blkn_m1, csr_m1, spmm_t, nm24_mr, 1 << 30};

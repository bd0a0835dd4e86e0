/* graphprune kernels: AVX-512 versions (16 outputs per slice). Compiled for AVX-512 whatever the
 * build machine; only called when the CPU reports avx512f/bw/vl/dq (gp_ops.c). The kernels both vector
 * widths share are in gp_simd.h, written over the operations defined here. */
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#include <immintrin.h>
#include <string.h>

#define GP_W 16 /* floats per vector */
#define GP_MR 8 /* 2:4 rows per pass */
typedef __m512 gp_v;
typedef __m512i gp_vi;
typedef __mmask16 gp_mask;
#include "gp_simd.h"

static inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

static inline gp_v v_zero(void) { return _mm512_setzero_ps(); }
static inline gp_v v_set1(float f) { return _mm512_set1_ps(f); }
static inline gp_v v_load(const float* p) { return _mm512_loadu_ps(p); }
static inline void v_store(float* p, gp_v v) { _mm512_storeu_ps(p, v); }
static inline gp_v v_add(gp_v a, gp_v b) { return _mm512_add_ps(a, b); }
static inline gp_v v_fma(gp_v a, gp_v b, gp_v c) { return _mm512_fmadd_ps(a, b, c); }
/* scalar loads and inserts (faster than vgatherdps on the AMD Zen 4/5 cores measured here, and no slower
 * on Intel) */
static inline gp_v v_gather(const float* x, const uint16_t* i) {
  return _mm512_insertf32x4(_mm512_insertf32x4(_mm512_insertf32x4(_mm512_castps128_ps512(gather4(x, i)),
                                                                  gather4(x, i + 4), 1),
                                               gather4(x, i + 8), 2),
                            gather4(x, i + 12), 3);
}
static inline gp_v v_bcast4(const float* p) { return _mm512_broadcast_f32x4(_mm_loadu_ps(p)); }
static inline gp_vi v_nm24_idx(uint32_t bits) {
  return _mm512_srlv_epi32(_mm512_set1_epi32((int)bits),
                           _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30));
}
static inline gp_v v_permute(gp_v x, gp_vi c) { return _mm512_permutevar_ps(x, c); }
static inline gp_mask v_mask(int64_t n) { return tail_mask(n); }
static inline gp_v v_maskload(const float* p, gp_mask m) { return _mm512_maskz_loadu_ps(m, p); }
static inline void v_maskstore(float* p, gp_mask m, gp_v v) { _mm512_mask_storeu_ps(p, m, v); }
static inline gp_v v_load_part(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(tail_mask(n), p); }
static inline void v_store_part(float* p, gp_v v, int64_t n) { _mm512_mask_storeu_ps(p, tail_mask(n), v); }

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
      __m256 r = _mm256_add_ps(blkn8_sum(x, v, ix, L), _mm256_maskz_loadu_ps((__mmask8)m, bias + c * 8));
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

/* many rows: xt is [K][ldx] (rows contiguous), each weight is loaded once per 128 rows, then per 64 and 16
 * (spmm_t_4x) */
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
  spmm_t_4x(w, xt, ldx, bias, yt, ldy, n0, n1, mb, m1);
}

const gp_isa gp_isa_avx512 = {"avx512", 16, sell_m1, nm24_m1, blkn_m1, csr_m1, spmm_t, nm24_mr, 1 << 30};

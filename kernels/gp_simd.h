/* graphprune kernels: the kernel bodies the AVX2 and AVX-512 files share, written once over a float vector
 * of GP_W lanes. Not compiled by itself: gp_avx2.c and gp_avx512.c each include it once, so every function
 * here is compiled once per instruction set, under that file's `#pragma GCC target`.
 *
 * Before including it, the file defines
 *   GP_W     floats per vector = outputs per SELL / 2:4 slice (8 or 16)
 *   GP_MR    the most rows one 2:4 multi-row pass takes (4 or 8: what the vector registers hold)
 *   gp_v, gp_vi, gp_mask   the float vector, the int32 vector and the lane-mask types
 * and, anywhere in the file, the static inline operations declared below. */
#ifndef GP_SIMD_H
#define GP_SIMD_H

#include <immintrin.h>
#include <string.h>

#include "gp_kernels.h"

#if GP_W != 8 && GP_W != 16
#error "gp_simd.h: define GP_W (8 or 16) before including it"
#endif
#if GP_MR != 4 && GP_MR != 8
#error "gp_simd.h: define GP_MR (4 or 8) before including it"
#endif

#ifndef GP_PF
#define GP_PF 32 /* software prefetch distance, in 64-byte steps of the value stream (roughly) */
#endif

/* ---- operations the including file defines */
static inline gp_v v_zero(void);
static inline gp_v v_set1(float f);
static inline gp_v v_load(const float* p);
static inline void v_store(float* p, gp_v v);
static inline gp_v v_add(gp_v a, gp_v b);
static inline gp_v v_fma(gp_v a, gp_v b, gp_v c);                /* a * b + c */
static inline gp_v v_gather(const float* x, const uint16_t* i);   /* x[i[0]], ..., x[i[GP_W-1]] */
static inline gp_v v_bcast4(const float* p);                      /* p[0..3] in every 128-bit lane */
static inline gp_vi v_nm24_idx(uint32_t bits);                    /* lane l: bits >> 2l (2:4 in-group index) */
static inline gp_v v_permute(gp_v x, gp_vi c);                    /* lane l: its 128-bit lane's element c[l] & 3 */
static inline gp_mask v_mask(int64_t n);                          /* the first min(n, GP_W) lanes */
static inline gp_v v_maskload(const float* p, gp_mask m);         /* lanes outside m read as 0 */
static inline void v_maskstore(float* p, gp_mask m, gp_v v);      /* lanes outside m left alone */
static inline gp_v v_load_part(const float* p, int64_t n);        /* the first min(n, GP_W) floats, then 0 */
static inline void v_store_part(float* p, gp_v v, int64_t n);     /* the first min(n, GP_W) floats */

/* ---- helpers of both files (both targets include AVX2 and FMA) */

/* x at 4 uint16 indices, read as one 64-bit word (the loops that gather are load-bound: fewer loads) */
static inline __m128 gather4(const float* x, const uint16_t* i) {
  uint64_t w;
  memcpy(&w, i, 8);
  return _mm_setr_ps(x[(uint16_t)w], x[(uint16_t)(w >> 16)], x[(uint16_t)(w >> 32)], x[(uint16_t)(w >> 48)]);
}

/* blocks of 8 outputs: the sum over a block column's L entries of x[ix[t]] times its 8 values, 4 chains */
static inline __m256 blkn8_sum(const float* x, const float* v, const uint16_t* ix, int64_t L) {
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
  return _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
}

/* ---- kernels over GP_W lanes */

/* sliced ELL: per step, GP_W values, GP_W uint16 indices, GP_W x loads; lanes map to outputs through perm */
static void sell_m1(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1) {
  for (int64_t s = s0; s < s1; ++s) {
    const float* v = p->val + p->sptr[s] * GP_W;
    const uint16_t* ix = p->idx + p->sptr[s] * GP_W;
    const int64_t L = p->sptr[s + 1] - p->sptr[s];
    gp_v a0 = v_zero(), a1 = v_zero();
    int64_t t = 0;
    for (; t + 2 <= L; t += 2) {
      /* software prefetch ~2 KB ahead: the x loads fill the load queue, so the hardware prefetcher
       * alone keeps too few memory requests in flight (measured: 1.4-2x slower without) */
      for (int o = 0; o < 2 * GP_W; o += 16) _mm_prefetch((const char*)(v + t * GP_W + GP_PF * 16 + o), _MM_HINT_T0);
      _mm_prefetch((const char*)(ix + t * GP_W + GP_PF * 16), _MM_HINT_T0);
      a0 = v_fma(v_load(v + t * GP_W), v_gather(x, ix + t * GP_W), a0);
      a1 = v_fma(v_load(v + t * GP_W + GP_W), v_gather(x, ix + t * GP_W + GP_W), a1);
    }
    if (t < L) a0 = v_fma(v_load(v + t * GP_W), v_gather(x, ix + t * GP_W), a0);
    float r[GP_W];
    v_store(r, v_add(a0, a1));
    const int32_t* perm = p->perm + s * GP_W;
    for (int l = 0; l < GP_W; ++l)
      if (perm[l] >= 0) y[perm[l]] = r[l] + bias[perm[l]];
  }
}

/* 2:4 along K: per group of 4 k, x[4g..4g+3] is broadcast to every 128-bit lane and each output lane
 * picks its two values with an in-lane permute driven by its 2-bit indices. A slice holds, per group,
 * 2 value vectors (2 * GP_W floats) and 2 index words. */
static void nm24_m1(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1) {
  const int64_t G = p->groups, Gfull = p->K / 4;
  float xtail[4] = {0, 0, 0, 0};
  if (G > Gfull) memcpy(xtail, x + Gfull * 4, (size_t)(p->K - Gfull * 4) * sizeof(float));
  for (int64_t s = s0; s < s1; ++s) {
    const float* v = p->val + s * G * 2 * GP_W;
    const uint32_t* b = p->bits + s * G * 2;
    gp_v a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
    int64_t g = 0;
    for (; g + 2 <= Gfull; g += 2) {
      /* values and index words prefetched the same number of groups ahead */
      for (int o = 0; o < 4 * GP_W; o += 16) _mm_prefetch((const char*)(v + g * 2 * GP_W + GP_PF * 32 + o), _MM_HINT_T0);
      _mm_prefetch((const char*)(b + 2 * g + GP_PF * (32 / GP_W)), _MM_HINT_T0);
      gp_v xb0 = v_bcast4(x + 4 * g);
      gp_v xb1 = v_bcast4(x + 4 * g + 4);
      gp_vi c0 = v_nm24_idx(b[2 * g]);
      gp_vi c1 = v_nm24_idx(b[2 * g + 1]);
      gp_vi c2 = v_nm24_idx(b[2 * g + 2]);
      gp_vi c3 = v_nm24_idx(b[2 * g + 3]);
      a0 = v_fma(v_load(v + g * 2 * GP_W), v_permute(xb0, c0), a0);
      a1 = v_fma(v_load(v + g * 2 * GP_W + GP_W), v_permute(xb0, c1), a1);
      a2 = v_fma(v_load(v + g * 2 * GP_W + 2 * GP_W), v_permute(xb1, c2), a2);
      a3 = v_fma(v_load(v + g * 2 * GP_W + 3 * GP_W), v_permute(xb1, c3), a3);
    }
    for (; g < G; ++g) {
      const float* xg = g < Gfull ? x + 4 * g : xtail;
      gp_v xb = v_bcast4(xg);
      gp_vi c0 = v_nm24_idx(b[2 * g]);
      gp_vi c1 = v_nm24_idx(b[2 * g + 1]);
      a0 = v_fma(v_load(v + g * 2 * GP_W), v_permute(xb, c0), a0);
      a1 = v_fma(v_load(v + g * 2 * GP_W + GP_W), v_permute(xb, c1), a1);
    }
    int64_t nv = p->N - s * GP_W;
    gp_v r = v_add(v_add(a0, a1), v_add(a2, a3));
    v_store_part(y + s * GP_W, v_add(r, v_load_part(bias + s * GP_W, nv)), nv);
  }
}

/* 2:4 for R <= GP_MR rows at once: the packed weights and their index vectors are loaded once for all rows */
static inline __attribute__((always_inline)) void nm24_rows(const gp_packed* p, const float* x, int64_t ldx,
                                                            const int R, const float* bias, float* y, int64_t ldy,
                                                            int64_t s0, int64_t s1) {
  const int64_t G = p->groups, Gfull = p->K / 4;
  float xtail[GP_MR][4];
  memset(xtail, 0, sizeof xtail);
  if (G > Gfull)
    for (int i = 0; i < R; ++i) memcpy(xtail[i], x + i * ldx + Gfull * 4, (size_t)(p->K - Gfull * 4) * sizeof(float));
  for (int64_t s = s0; s < s1; ++s) {
    const float* v = p->val + s * G * 2 * GP_W;
    const uint32_t* b = p->bits + s * G * 2;
    gp_v a0[GP_MR], a1[GP_MR];
    for (int i = 0; i < R; ++i) a0[i] = a1[i] = v_zero();
    for (int64_t g = 0; g < G; ++g) {
      for (int o = 0; o < 2 * GP_W; o += 16) _mm_prefetch((const char*)(v + g * 2 * GP_W + GP_PF * 32 + o), _MM_HINT_T0);
      const gp_v v0 = v_load(v + g * 2 * GP_W), v1 = v_load(v + g * 2 * GP_W + GP_W);
      const gp_vi c0 = v_nm24_idx(b[2 * g]);
      const gp_vi c1 = v_nm24_idx(b[2 * g + 1]);
      for (int i = 0; i < R; ++i) {
        const gp_v xb = v_bcast4(g < Gfull ? x + i * ldx + 4 * g : xtail[i]);
        a0[i] = v_fma(v0, v_permute(xb, c0), a0[i]);
        a1[i] = v_fma(v1, v_permute(xb, c1), a1[i]);
      }
    }
    int64_t nv = p->N - s * GP_W;
    const gp_v bb = v_load_part(bias + s * GP_W, nv);
    for (int i = 0; i < R; ++i) v_store_part(y + i * ldy + s * GP_W, v_add(v_add(a0[i], a1[i]), bb), nv);
  }
}

static void nm24_mr(const gp_packed* p, const float* x, int64_t ldx, int64_t rows, const float* bias, float* y,
                    int64_t ldy, int64_t s0, int64_t s1) {
  for (int64_t r0 = 0; r0 < rows; r0 += GP_MR) {
    const float* xr = x + r0 * ldx;
    float* yr = y + r0 * ldy;
    /* R a constant in each call: nm24_rows' loops over the rows unroll and its accumulators stay in registers */
#define GP_ROWS(R) nm24_rows(p, xr, ldx, R, bias, yr, ldy, s0, s1); break
    switch (rows - r0 >= GP_MR ? GP_MR : (int)(rows - r0)) {
#if GP_MR == 8
      case 8: GP_ROWS(8);
      case 7: GP_ROWS(7);
      case 6: GP_ROWS(6);
      case 5: GP_ROWS(5);
#endif
      case 4: GP_ROWS(4);
      case 3: GP_ROWS(3);
      case 2: GP_ROWS(2);
      default: GP_ROWS(1);
    }
#undef GP_ROWS
  }
}

/* Transposed SpMM (gp_spmm_t_fn) on columns [m0, m1): 4 chains of GP_W columns while 4 * GP_W are left,
 * then GP_W (the last masked) at a time with four chains over the nonzeros (they hide the FMA latency). */
static void spmm_t_4x(const gp_csr* w, const float* xt, int64_t ldx, const float* bias, float* yt, int64_t ldy,
                      int64_t n0, int64_t n1, int64_t m0, int64_t m1) {
  int64_t mb = m0;
  for (; mb + 4 * GP_W <= m1; mb += 4 * GP_W) {
    for (int64_t n = n0; n < n1; ++n) {
      gp_v a0 = v_set1(bias[n]), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t j = w->ptr[n]; j < w->ptr[n + 1]; ++j) {
        const gp_v vb = v_set1(w->val[j]);
        const float* r = xt + (int64_t)w->idx[j] * ldx + mb;
        a0 = v_fma(vb, v_load(r), a0);
        a1 = v_fma(vb, v_load(r + GP_W), a1);
        a2 = v_fma(vb, v_load(r + 2 * GP_W), a2);
        a3 = v_fma(vb, v_load(r + 3 * GP_W), a3);
      }
      float* o = yt + n * ldy + mb;
      v_store(o, a0);
      v_store(o + GP_W, a1);
      v_store(o + 2 * GP_W, a2);
      v_store(o + 3 * GP_W, a3);
    }
  }
  for (; mb < m1; mb += GP_W) {
    const gp_mask m = v_mask(m1 - mb);
    for (int64_t n = n0; n < n1; ++n) {
      gp_v a0 = v_set1(bias[n]), a1 = v_zero(), a2 = a1, a3 = a1;
      const float* xb = xt + mb;
      int64_t j = w->ptr[n], e = w->ptr[n + 1];
      for (; j + 4 <= e; j += 4) {
        a0 = v_fma(v_set1(w->val[j]), v_maskload(xb + (int64_t)w->idx[j] * ldx, m), a0);
        a1 = v_fma(v_set1(w->val[j + 1]), v_maskload(xb + (int64_t)w->idx[j + 1] * ldx, m), a1);
        a2 = v_fma(v_set1(w->val[j + 2]), v_maskload(xb + (int64_t)w->idx[j + 2] * ldx, m), a2);
        a3 = v_fma(v_set1(w->val[j + 3]), v_maskload(xb + (int64_t)w->idx[j + 3] * ldx, m), a3);
      }
      for (; j < e; ++j) a0 = v_fma(v_set1(w->val[j]), v_maskload(xb + (int64_t)w->idx[j] * ldx, m), a0);
      v_maskstore(yt + n * ldy + mb, m, v_add(v_add(a0, a1), v_add(a2, a3)));
    }
  }
}

#endif

/* graphprune kernels: portable C versions (any CPU). They read the canonical CSR directly, plus the
 * block layout, which needs no vector width. */
#include "gp_kernels.h"

static void csr_m1(const gp_csr* w, const float* x, const float* bias, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
    int64_t j = w->ptr[n], e = w->ptr[n + 1];
    for (; j + 4 <= e; j += 4) {
      a0 += w->val[j] * x[w->idx[j]];
      a1 += w->val[j + 1] * x[w->idx[j + 1]];
      a2 += w->val[j + 2] * x[w->idx[j + 2]];
      a3 += w->val[j + 3] * x[w->idx[j + 3]];
    }
    for (; j < e; ++j) a0 += w->val[j] * x[w->idx[j]];
    y[n] = bias[n] + ((a0 + a1) + (a2 + a3));
  }
}

#define MB 32 /* rows per block: the compiler vectorizes the inner loop */

static void spmm_t(const gp_csr* w, const float* xt, int64_t ldx, const float* bias, float* yt, int64_t ldy,
                   int64_t n0, int64_t n1, int64_t m0, int64_t m1) {
  for (int64_t mb = m0; mb < m1; mb += MB) {
    int64_t mw = m1 - mb < MB ? m1 - mb : MB;
    for (int64_t n = n0; n < n1; ++n) {
      float acc[MB];
      for (int i = 0; i < MB; ++i) acc[i] = bias[n];
      for (int64_t j = w->ptr[n]; j < w->ptr[n + 1]; ++j) {
        const float v = w->val[j];
        const float* xr = xt + (int64_t)w->idx[j] * ldx + mb;
        if (mw == MB) {
          for (int i = 0; i < MB; ++i) acc[i] += v * xr[i];
        } else {
          for (int i = 0; i < mw; ++i) acc[i] += v * xr[i];
        }
      }
      float* yr = yt + n * ldy + mb;
      for (int i = 0; i < mw; ++i) yr[i] = acc[i];
    }
  }
}

/* blocks of bn outputs: block column c covers outputs [c*bn, c*bn+bn) (the last may be partial) */
void gp_portable_blkn_m1(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1) {
  const int bn = p->bn;
  for (int64_t c = s0; c < s1; ++c) {
    float acc[64];
    for (int i = 0; i < bn; ++i) acc[i] = 0.f;
    for (int64_t e = p->sptr[c]; e < p->sptr[c + 1]; ++e) {
      const float xv = x[p->idx[e]];
      const float* v = p->val + e * bn;
      for (int i = 0; i < bn; ++i) acc[i] += xv * v[i];
    }
    int64_t nb = c * bn, ne = nb + bn < p->N ? nb + bn : p->N;
    for (int64_t n = nb; n < ne; ++n) y[n] = bias[n] + acc[n - nb];
  }
}

const gp_isa gp_isa_portable = {"portable", 0, 0, 0, gp_portable_blkn_m1, csr_m1, spmm_t, 0, 0};

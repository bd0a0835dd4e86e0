/* graphprune kernels: packed sparse layouts and the per-ISA kernel table. */
#ifndef GP_KERNELS_H
#define GP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* The canonical format (kernels/README.md): CSR over the outputs. */
typedef struct gp_csr {
  int64_t K, N, nnz;
  const float* val;
  const int32_t* idx; /* reduction index of each value, in [0, K) */
  const int32_t* ptr; /* [N + 1] */
} gp_csr;

enum gp_layout {
  GP_LAYOUT_CSR = 0,  /* no packed copy: kernels read the CSR */
  GP_LAYOUT_SELL = 1, /* sliced ELL: `lanes` outputs per slice, padded to the slice's longest output */
  GP_LAYOUT_NM24 = 2, /* 2:4 along K: per slice and group of 4 k, 2 values per output + 2-bit in-group indices */
  GP_LAYOUT_BLKN = 3, /* blocks of `bn` consecutive outputs sharing their k: per block column a k list */
};

typedef struct gp_packed {
  int layout;
  int lanes;          /* outputs per slice (SELL, NM24) */
  int bn;             /* block width along the outputs (BLKN) */
  int64_t K, N, nslices;
  int64_t* sptr;      /* SELL: start step of each slice [nslices+1]; BLKN: start of each block column */
  float* val;         /* SELL: [steps][lanes]; NM24: [slice][group][2][lanes]; BLKN: [entries][bn] */
  uint16_t* idx;      /* SELL: [steps][lanes]; BLKN: [entries] */
  uint32_t* bits;     /* NM24: [slice][group][2], lane l's in-group index at bits 2l..2l+1 */
  int32_t* perm;      /* SELL: output of each slice lane (outputs sorted by length, less padding), -1 = none */
  int64_t groups;     /* NM24: ceil(K / 4) */
} gp_packed;

/* Kernels compute, for outputs/slices in [s0, s1): y = x @ W + bias for ONE row x (batch 1). */
typedef void (*gp_m1_fn)(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1);
typedef void (*gp_csr_m1_fn)(const gp_csr* w, const float* x, const float* bias, float* y, int64_t n0, int64_t n1);
/* Transposed SpMM over many rows: yt[n][m] = bias[n] + sum_j val[j] * xt[idx[j]][m], for n in [n0, n1),
 * m in [m0, m1); xt rows have stride ldx, yt rows stride ldy (any m count: tails handled). */
typedef void (*gp_spmm_t_fn)(const gp_csr* w, const float* xt, int64_t ldx, const float* bias, float* yt,
                             int64_t ldy, int64_t n0, int64_t n1, int64_t m0, int64_t m1);

/* The same for `rows` rows of x (stride ldx) into rows of y (stride ldy), weights read once per pass. */
typedef void (*gp_mr_fn)(const gp_packed* p, const float* x, int64_t ldx, int64_t rows, const float* bias, float* y,
                         int64_t ldy, int64_t s0, int64_t s1);

typedef struct gp_isa {
  const char* name;
  int lanes;          /* slice width this ISA packs SELL / NM24 with; 0 = packs nothing */
  gp_m1_fn sell_m1;   /* slices [s0, s1) */
  gp_m1_fn nm24_m1;   /* slices [s0, s1) */
  gp_m1_fn blkn_m1;   /* block columns [s0, s1) */
  gp_csr_m1_fn csr_m1;
  gp_spmm_t_fn spmm_t;
  gp_mr_fn nm24_mr;   /* 2:4 for a few rows (NULL: not available) */
  int64_t mr_rows;    /* the most rows nm24_mr is used for */
} gp_isa;

extern const gp_isa gp_isa_portable;
void gp_portable_blkn_m1(const gp_packed* p, const float* x, const float* bias, float* y, int64_t s0, int64_t s1);
extern const gp_isa gp_isa_avx2;
extern const gp_isa gp_isa_avx512;

#endif

/* graphprune kernels: helpers shared by the CPU ops (gp_ops.c) and the CUDA ops (cuda/gp_cuda.cu). */
#ifndef GP_COMMON_H
#define GP_COMMON_H

#include "gp_ort.h"

#ifdef __cplusplus
extern "C" {
#endif

extern const OrtApi* g_api; /* set by RegisterCustomOps */

/* A status carrying a printf-formatted message. */
OrtStatus* gp_err(int code, const char* fmt, ...);

typedef struct tensor {
  int type;
  size_t rank;
  int64_t dims[16];
  int64_t count;
  void* data; /* host or device memory, as the execution provider placed it */
} tensor;

OrtStatus* read_tensor(const OrtValue* v, tensor* t);

/* CUDA library only (cuda/gp_cuda.cu): its op descriptors, added to the same domain. */
int gp_cuda_ops(const void** ops, int max_ops);

#ifdef __cplusplus
}
#endif

#define TRY(expr)            \
  do {                       \
    OrtStatus* st_ = (expr); \
    if (st_) return st_;     \
  } while (0)

#endif

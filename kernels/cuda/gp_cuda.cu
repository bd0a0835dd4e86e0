// graphprune kernels: CUDA versions of SparseMatMul and SparseConv for onnxruntime's
// CUDAExecutionProvider. Built by nvcc into a separate library (graphprune.kernels.build_cuda) together
// with the CPU sources, so one library registers both: onnxruntime picks the CUDA kernel for nodes it
// places on the GPU and the CPU kernel elsewhere (and a CPU-only onnxruntime just uses the CPU ones).
//
// Every launch goes on onnxruntime's compute stream (KernelContext_GetGPUComputeStream), never the
// default stream. The weights stay in the canonical CSR (kernels/README.md): one warp per output for
// rows (MatMul), one thread per spatial position for the pointwise convolution (coalesced along P).
#include <cuda_runtime.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "../gp_common.h"

namespace {

enum { OP_MATMUL = 0, OP_CONV = 1 };

struct CudaKernel {
  int op;
  int64_t K, N;
  int checked;  // constant weights, checked once at creation
};

const char* op_name(const CudaKernel* k) { return k->op == OP_MATMUL ? "SparseMatMul" : "SparseConv"; }

OrtStatus* cuda_err(cudaError_t e, const char* what) {
  return gp_err(GP_ORT_FAIL, "graphprune CUDA kernels: %s failed: %s", what, cudaGetErrorString(e));
}

// Y[m, n] = bias[n] + sum_j val[j] * X[m, idx[j]]: one warp per output n, ROWS rows per warp.
constexpr int ROWS = 16;
__global__ void csr_rows_kernel(const float* __restrict__ x, const float* __restrict__ val,
                                const int32_t* __restrict__ idx, const int32_t* __restrict__ ptr,
                                const float* __restrict__ bias, float* __restrict__ y, int64_t M, int64_t K,
                                int64_t N) {
  const int lane = threadIdx.x & 31;
  const int64_t n = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (n >= N) return;
  const int32_t b = ptr[n], e = ptr[n + 1];
  const int64_t m0 = (int64_t)blockIdx.y * ROWS;
  for (int64_t m = m0; m < m0 + ROWS && m < M; ++m) {
    const float* xr = x + m * K;
    float acc = 0.f;
    for (int32_t j = b + lane; j < e; j += 32) acc += val[j] * xr[idx[j]];
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    if (lane == 0) y[m * N + n] = acc + bias[n];
  }
}

// Y[b, n, p] = bias[n] + sum_j val[j] * X[b, idx[j], p]: threads along p.
__global__ void csr_conv_kernel(const float* __restrict__ x, const float* __restrict__ val,
                                const int32_t* __restrict__ idx, const int32_t* __restrict__ ptr,
                                const float* __restrict__ bias, float* __restrict__ y, int64_t B, int64_t K,
                                int64_t N, int64_t P) {
  const int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= P) return;
  for (int64_t bn = blockIdx.y; bn < B * N; bn += gridDim.y) {
    const int64_t bi = bn / N, n = bn % N;
    const float* xb = x + bi * K * P + p;
    float acc = bias[n];
    for (int32_t j = ptr[n]; j < ptr[n + 1]; ++j) acc += val[j] * xb[(int64_t)idx[j] * P];
    y[(bi * N + n) * P + p] = acc;
  }
}

// Checks the CSR against the contract; reads device tensors back through `stream` (0: a private stream).
OrtStatus* check_csr(const CudaKernel* k, const tensor* val, const tensor* idx, const tensor* ptr,
                     const tensor* bias, cudaStream_t stream) {
  const char* op = op_name(k);
  if (val->type != GP_T_FLOAT || idx->type != GP_T_INT32 || ptr->type != GP_T_INT32 || bias->type != GP_T_FLOAT)
    return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: values and bias must be float32, indices and indptr int32", op);
  if (ptr->count != k->N + 1 || bias->count != k->N || val->count != idx->count)
    return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: indptr must have N+1 = %lld entries, bias N, values as many as "
                  "indices", op, (long long)(k->N + 1));
  int32_t* hp = (int32_t*)malloc((size_t)ptr->count * sizeof(int32_t));
  int32_t* hi = (int32_t*)malloc((size_t)(idx->count ? idx->count : 1) * sizeof(int32_t));
  OrtStatus* st = NULL;
  if (!hp || !hi) st = gp_err(GP_ORT_FAIL, "%s: out of host memory", op);
  cudaStream_t own = 0;
  if (!st && !stream && cudaStreamCreateWithFlags(&own, cudaStreamNonBlocking) != cudaSuccess)
    st = gp_err(GP_ORT_FAIL, "%s: cannot create a CUDA stream", op);
  cudaStream_t s = stream ? stream : own;
  if (!st) {
    cudaError_t e = cudaMemcpyAsync(hp, ptr->data, (size_t)ptr->count * 4, cudaMemcpyDefault, s);
    if (e == cudaSuccess && idx->count)
      e = cudaMemcpyAsync(hi, idx->data, (size_t)idx->count * 4, cudaMemcpyDefault, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess) st = cuda_err(e, "reading the sparse weight");
  }
  if (own) cudaStreamDestroy(own);
  if (!st && (hp[0] != 0 || hp[k->N] != val->count))
    st = gp_err(GP_ORT_INVALID_ARGUMENT, "%s: indptr must start at 0 and end at nnz = %lld", op,
                (long long)val->count);
  for (int64_t n = 0; !st && n < k->N; ++n)
    if (hp[n + 1] < hp[n]) st = gp_err(GP_ORT_INVALID_ARGUMENT, "%s: indptr decreases at output %lld", op, (long long)n);
  for (int64_t j = 0; !st && j < idx->count; ++j)
    if (hi[j] < 0 || hi[j] >= k->K)
      st = gp_err(GP_ORT_INVALID_ARGUMENT, "%s: index %d at position %lld is outside [0, K=%lld)", op, hi[j],
                  (long long)j, (long long)k->K);
  for (int64_t n = 0; !st && n < k->N; ++n)
    for (int64_t j = hp[n] + 1; !st && j < hp[n + 1]; ++j)
      if (hi[j] <= hi[j - 1])
        st = gp_err(GP_ORT_INVALID_ARGUMENT, "%s: indices of output %lld are not strictly ascending", op,
                    (long long)n);
  free(hp);
  free(hi);
  return st;
}

OrtStatus* create(int opk, const OrtKernelInfo* info, void** out) {
  CudaKernel* k = (CudaKernel*)calloc(1, sizeof(CudaKernel));
  if (!k) return gp_err(GP_ORT_FAIL, "graphprune CUDA kernels: out of memory");
  k->op = opk;
  OrtStatus* st = GP_API(g_api, KernelInfoGetAttribute_int64)(info, "K", &k->K);
  if (!st) st = GP_API(g_api, KernelInfoGetAttribute_int64)(info, "N", &k->N);
  if (!st && (k->K < 1 || k->N < 1 || k->K > INT_MAX || k->N > INT_MAX))
    st = gp_err(GP_ORT_INVALID_ARGUMENT, "%s: attributes K and N must be positive", op_name(k));
  if (!st) {
    const OrtValue* cv[4] = {0, 0, 0, 0};
    int all_const = 1;
    for (size_t i = 1; i <= 4 && all_const; ++i) {
      int c = 0;
      OrtStatus* s2 = GP_API(g_api, KernelInfoGetConstantInput_tensor)(info, i, &c, &cv[i - 1]);
      if (s2) GP_API(g_api, ReleaseStatus)(s2), c = 0;
      all_const = c && cv[i - 1];
    }
    if (all_const) {
      tensor t[4];
      for (int i = 0; i < 4 && !st; ++i) st = read_tensor(cv[i], &t[i]);
      if (!st) st = check_csr(k, &t[0], &t[1], &t[2], &t[3], 0);
      if (!st) k->checked = 1;
    }
  }
  if (st) {
    free(k);
    return st;
  }
  *out = k;
  return NULL;
}

OrtStatus* compute(void* kp, OrtKernelContext* ctx) {
  CudaKernel* k = (CudaKernel*)kp;
  const char* op = op_name(k);
  const OrtValue* in[5];
  tensor t[5];
  for (size_t i = 0; i < 5; ++i) {
    TRY(GP_API(g_api, KernelContext_GetInput)(ctx, i, &in[i]));
    if (!in[i]) return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: input %zu is missing", op, i);
    TRY(read_tensor(in[i], &t[i]));
  }
  void* sp = NULL;
  TRY(GP_API(g_api, KernelContext_GetGPUComputeStream)(ctx, &sp));
  cudaStream_t stream = (cudaStream_t)sp;
  if (!stream) return gp_err(GP_ORT_FAIL, "%s: onnxruntime gave no CUDA compute stream", op);
  if (!k->checked) TRY(check_csr(k, &t[1], &t[2], &t[3], &t[4], stream));  // weights fed as inputs
  const tensor* X = &t[0];
  if (X->type != GP_T_FLOAT) return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: X must be float32", op);
  int64_t odims[16];
  memcpy(odims, X->dims, sizeof odims);
  if (k->op == OP_MATMUL) {
    if (X->rank < 1 || X->dims[X->rank - 1] != k->K)
      return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: X's last dimension must be K = %lld", op, (long long)k->K);
    odims[X->rank - 1] = k->N;
  } else {
    if (X->rank < 2 || X->dims[1] != k->K)
      return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: X must be [B, K=%lld, *spatial]", op, (long long)k->K);
    odims[1] = k->N;
  }
  OrtValue* out = NULL;
  TRY(GP_API(g_api, KernelContext_GetOutput)(ctx, 0, odims, X->rank, &out));
  void* yv = NULL;
  TRY(GP_API(g_api, GetTensorMutableData)(out, &yv));
  if (X->count == 0) return NULL;
  const float* x = (const float*)X->data;
  const float* val = (const float*)t[1].data;
  const int32_t* idx = (const int32_t*)t[2].data;
  const int32_t* ptr = (const int32_t*)t[3].data;
  const float* bias = (const float*)t[4].data;
  float* y = (float*)yv;
  int64_t P = 1;
  for (size_t i = 2; k->op == OP_CONV && i < X->rank; ++i) P *= X->dims[i];
  if (k->op == OP_MATMUL || P == 1) {
    const int64_t M = X->count / k->K;
    const int warps = 8;
    dim3 grid((unsigned)((k->N + warps - 1) / warps), (unsigned)((M + ROWS - 1) / ROWS));
    if ((M + ROWS - 1) / ROWS > 65535) return gp_err(GP_ORT_INVALID_ARGUMENT, "%s: too many rows (%lld)", op,
                                                     (long long)M);
    csr_rows_kernel<<<grid, warps * 32, 0, stream>>>(x, val, idx, ptr, bias, y, M, k->K, k->N);
  } else {
    const int64_t B = X->dims[0];
    const int threads = 256;
    int64_t gy = B * k->N < 65535 ? B * k->N : 65535;
    dim3 grid((unsigned)((P + threads - 1) / threads), (unsigned)gy);
    csr_conv_kernel<<<grid, threads, 0, stream>>>(x, val, idx, ptr, bias, y, B, k->K, k->N, P);
  }
  cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? NULL : cuda_err(e, "kernel launch");
}

// ---- descriptors (same layout and callbacks as the CPU ones, EP = CUDA)
const char* name_matmul(const GpOrtCustomOp*) { return "SparseMatMul"; }
const char* name_conv(const GpOrtCustomOp*) { return "SparseConv"; }
const char* ep_cuda(const GpOrtCustomOp*) { return "CUDAExecutionProvider"; }
int input_type(const GpOrtCustomOp*, size_t i) { return (i == 2 || i == 3) ? GP_T_INT32 : GP_T_FLOAT; }
size_t input_count(const GpOrtCustomOp*) { return 5; }
int output_type(const GpOrtCustomOp*, size_t) { return GP_T_FLOAT; }
size_t output_count(const GpOrtCustomOp*) { return 1; }
int zero_at(const GpOrtCustomOp*, size_t) { return 0; }
int one(const GpOrtCustomOp*) { return 1; }
int zero(const GpOrtCustomOp*) { return 0; }
int end_version(const GpOrtCustomOp*) { return INT_MAX; }
void destroy(void* p) { free(p); }
OrtStatus* create_matmul(const GpOrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) {
  return create(OP_MATMUL, info, out);
}
OrtStatus* create_conv(const GpOrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** out) {
  return create(OP_CONV, info, out);
}

GpOrtCustomOp make_op(const char* (*name)(const GpOrtCustomOp*),
                      OrtStatus* (*create_fn)(const GpOrtCustomOp*, const OrtApi*, const OrtKernelInfo*, void**)) {
  GpOrtCustomOp o;
  memset(&o, 0, sizeof o);
  o.version = GP_ORT_API_VERSION;
  o.GetName = name;
  o.GetExecutionProviderType = ep_cuda;
  o.GetInputType = input_type;
  o.GetInputTypeCount = input_count;
  o.GetOutputType = output_type;
  o.GetOutputTypeCount = output_count;
  o.KernelDestroy = destroy;
  o.GetInputCharacteristic = zero_at;   // required
  o.GetOutputCharacteristic = zero_at;  // required
  o.GetInputMemoryType = zero_at;       // default (device) memory
  o.GetVariadicInputMinArity = one;
  o.GetVariadicInputHomogeneity = zero;
  o.GetVariadicOutputMinArity = one;
  o.GetVariadicOutputHomogeneity = zero;
  o.CreateKernelV2 = create_fn;
  o.KernelComputeV2 = compute;
  o.GetStartVersion = one;
  o.GetEndVersion = end_version;
  return o;
}

GpOrtCustomOp g_cuda_matmul = make_op(name_matmul, create_matmul);  // static storage: outlives sessions
GpOrtCustomOp g_cuda_conv = make_op(name_conv, create_conv);

}  // namespace

extern "C" int gp_cuda_ops(const void** ops, int max_ops) {
  if (max_ops < 2) return 0;
  ops[0] = &g_cuda_matmul;
  ops[1] = &g_cuda_conv;
  return 2;
}

/* graphprune kernels: the small part of onnxruntime's C ABI this library uses.
 *
 * onnxruntime's C API is append-only and versioned: OrtApiBase::GetApi(v) returns a table of
 * function pointers whose first entries never move. We declare only what we call, by slot position
 * (counted from the `struct OrtApi` member list of the public header onnxruntime_c_api.h, one slot per
 * member, Release* members included) and the custom-op descriptor layout. Nothing here links against
 * libonnxruntime: the runtime hands us its table at registration.
 */
#ifndef GP_ORT_H
#define GP_ORT_H

#include <stddef.h>
#include <stdint.h>

/* The API version we need: KernelContext_ParallelFor arrived in 17 (1.17), constant inputs at kernel
 * creation in 15, status-returning kernels (descriptor >= 16) in 16. A build may override it
 * (-DGP_ORT_API_VERSION=N), which the tests use to exercise the mismatch error. */
#ifndef GP_ORT_API_VERSION
#define GP_ORT_API_VERSION 17
#endif

typedef struct OrtStatus OrtStatus;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtShapeInferContext OrtShapeInferContext;
typedef struct OrtApi OrtApi; /* opaque: accessed as an array of slots */

typedef struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
} OrtApiBase;

/* TensorProto element types we use */
enum { GP_T_FLOAT = 1, GP_T_INT32 = 6 };
/* OrtErrorCode values we use */
enum { GP_ORT_FAIL = 1, GP_ORT_INVALID_ARGUMENT = 2 };

/* Slot positions in the OrtApi table. */
enum {
  GP_SLOT_CreateStatus = 0,
  GP_SLOT_GetErrorMessage = 2,
  GP_SLOT_CreateCustomOpDomain = 26,
  GP_SLOT_CustomOpDomain_Add = 27,
  GP_SLOT_AddCustomOpDomain = 28,
  GP_SLOT_GetTensorMutableData = 51,
  GP_SLOT_GetTensorElementType = 60,
  GP_SLOT_GetDimensionsCount = 61,
  GP_SLOT_GetDimensions = 62,
  GP_SLOT_GetTensorShapeElementCount = 64,
  GP_SLOT_GetTensorTypeAndShape = 65,
  GP_SLOT_KernelInfoGetAttribute_int64 = 86,
  GP_SLOT_KernelContext_GetInputCount = 88,
  GP_SLOT_KernelContext_GetInput = 90,
  GP_SLOT_KernelContext_GetOutput = 91,
  GP_SLOT_ReleaseStatus = 93,
  GP_SLOT_ReleaseTensorTypeAndShapeInfo = 99,
  GP_SLOT_KernelContext_GetGPUComputeStream = 193,
  GP_SLOT_KernelInfoGetConstantInput_tensor = 249,
  GP_SLOT_KernelContext_ParallelFor = 274,
};

/* Signatures of those slots (plain C calling convention on Linux x86-64). */
typedef OrtStatus* (*gp_CreateStatus_fn)(int code, const char* msg);
typedef const char* (*gp_GetErrorMessage_fn)(const OrtStatus* status);
typedef OrtStatus* (*gp_CreateCustomOpDomain_fn)(const char* domain, OrtCustomOpDomain** out);
typedef OrtStatus* (*gp_CustomOpDomain_Add_fn)(OrtCustomOpDomain* domain, const void* op);
typedef OrtStatus* (*gp_AddCustomOpDomain_fn)(OrtSessionOptions* options, OrtCustomOpDomain* domain);
typedef OrtStatus* (*gp_GetTensorMutableData_fn)(OrtValue* value, void** out);
typedef OrtStatus* (*gp_GetTensorElementType_fn)(const OrtTensorTypeAndShapeInfo* info, int* out);
typedef OrtStatus* (*gp_GetDimensionsCount_fn)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
typedef OrtStatus* (*gp_GetDimensions_fn)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t n);
typedef OrtStatus* (*gp_GetTensorShapeElementCount_fn)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
typedef OrtStatus* (*gp_GetTensorTypeAndShape_fn)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);
typedef OrtStatus* (*gp_KernelInfoGetAttribute_int64_fn)(const OrtKernelInfo* info, const char* name, int64_t* out);
typedef OrtStatus* (*gp_KernelContext_GetInputCount_fn)(const OrtKernelContext* ctx, size_t* out);
typedef OrtStatus* (*gp_KernelContext_GetInput_fn)(const OrtKernelContext* ctx, size_t index, const OrtValue** out);
typedef OrtStatus* (*gp_KernelContext_GetOutput_fn)(OrtKernelContext* ctx, size_t index, const int64_t* dims,
                                                    size_t ndims, OrtValue** out);
typedef void (*gp_ReleaseStatus_fn)(OrtStatus* status);
typedef void (*gp_ReleaseTensorTypeAndShapeInfo_fn)(OrtTensorTypeAndShapeInfo* info);
typedef OrtStatus* (*gp_KernelContext_GetGPUComputeStream_fn)(const OrtKernelContext* ctx, void** out);
typedef OrtStatus* (*gp_KernelInfoGetConstantInput_tensor_fn)(const OrtKernelInfo* info, size_t index,
                                                              int* is_constant, const OrtValue** out);
typedef OrtStatus* (*gp_KernelContext_ParallelFor_fn)(const OrtKernelContext* ctx, void (*fn)(void*, size_t),
                                                      size_t total, size_t num_batch, void* user);

/* Read slot `slot` of the table as function type `T`. */
#define GP_API(api, name) ((gp_##name##_fn)(((void* const*)(api))[GP_SLOT_##name]))

/* The custom-op descriptor (OrtCustomOp): a version then callbacks in this fixed order. Fields up to
 * KernelComputeV2/InferOutputShapeFn are read for version >= 16, GetStart/EndVersion for >= 17; the
 * last four for later versions (kept NULL, never read at our version). */
typedef struct GpOrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const struct GpOrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const struct GpOrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const struct GpOrtCustomOp* op);
  int (*GetInputType)(const struct GpOrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const struct GpOrtCustomOp* op);
  int (*GetOutputType)(const struct GpOrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const struct GpOrtCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* ctx);
  void (*KernelDestroy)(void* kernel);
  int (*GetInputCharacteristic)(const struct GpOrtCustomOp* op, size_t index);  /* 0 = required */
  int (*GetOutputCharacteristic)(const struct GpOrtCustomOp* op, size_t index);
  int (*GetInputMemoryType)(const struct GpOrtCustomOp* op, size_t index);      /* 0 = default */
  int (*GetVariadicInputMinArity)(const struct GpOrtCustomOp* op);
  int (*GetVariadicInputHomogeneity)(const struct GpOrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const struct GpOrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const struct GpOrtCustomOp* op);
  OrtStatus* (*CreateKernelV2)(const struct GpOrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                               void** kernel);
  OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* ctx);
  OrtStatus* (*InferOutputShapeFn)(const struct GpOrtCustomOp* op, OrtShapeInferContext* ctx);
  int (*GetStartVersion)(const struct GpOrtCustomOp* op);
  int (*GetEndVersion)(const struct GpOrtCustomOp* op);
  size_t (*GetMayInplace)(int** input_index, int** output_index);
  void (*ReleaseMayInplace)(int* input_index, int* output_index);
  size_t (*GetAliasMap)(int** input_index, int** output_index);
  void (*ReleaseAliasMap)(int* input_index, int* output_index);
} GpOrtCustomOp;

#endif

/* The part of ONNX Runtime's C ABI that mxport's kernels use, declared here (the header is not in the wheel).
 *
 * The OrtApi is a table of function pointers that ONNX Runtime only ever appends to; a function keeps its index
 * in every later release. The indices below were counted in onnxruntime's include/onnxruntime/core/session/
 * onnxruntime_c_api.h (struct OrtApi, one entry per ORT_API2_STATUS / ORT_API_T / ORT_CLASS_RELEASE line).
 * KernelContext_ParallelFor (index 274) arrived in version 17 (ORT 1.17), the newest entry used here, so the
 * library asks for MXPORT_ORT_API_VERSION = 17 and runs on any ORT >= 1.17.
 *
 * OrtCustomOp is the struct ORT reads a custom op from; ORT reads the fields that exist at the op's `version`.
 */
#ifndef MXPORT_ORT_ABI_H
#define MXPORT_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

#define MXPORT_ORT_API_VERSION 17

typedef struct OrtStatus OrtStatus;
typedef struct OrtApi OrtApi;  /* opaque: reached through mx_api_fn() */
typedef struct OrtValue OrtValue;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtShapeInferContext OrtShapeInferContext;

typedef struct OrtApiBase {
    const OrtApi *(*GetApi)(uint32_t version);
    const char *(*GetVersionString)(void);
} OrtApiBase;

enum { ORT_OK = 0, ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };           /* OrtErrorCode */
/* ONNXTensorElementDataType */
enum { ELEM_FLOAT = 1, ELEM_UINT8 = 2, ELEM_INT32 = 6, ELEM_INT64 = 7, ELEM_BFLOAT16 = 16 };
enum { IO_REQUIRED = 0, IO_OPTIONAL = 1 };                               /* OrtCustomOpInputOutputCharacteristic */

typedef struct OrtCustomOp {
    uint32_t version;
    void *(*CreateKernel)(const struct OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info);
    const char *(*GetName)(const struct OrtCustomOp *op);
    const char *(*GetExecutionProviderType)(const struct OrtCustomOp *op);
    int (*GetInputType)(const struct OrtCustomOp *op, size_t index);
    size_t (*GetInputTypeCount)(const struct OrtCustomOp *op);
    int (*GetOutputType)(const struct OrtCustomOp *op, size_t index);
    size_t (*GetOutputTypeCount)(const struct OrtCustomOp *op);
    void (*KernelCompute)(void *op_kernel, OrtKernelContext *context);
    void (*KernelDestroy)(void *op_kernel);
    int (*GetInputCharacteristic)(const struct OrtCustomOp *op, size_t index);
    int (*GetOutputCharacteristic)(const struct OrtCustomOp *op, size_t index);
    int (*GetInputMemoryType)(const struct OrtCustomOp *op, size_t index);
    int (*GetVariadicInputMinArity)(const struct OrtCustomOp *op);
    int (*GetVariadicInputHomogeneity)(const struct OrtCustomOp *op);
    int (*GetVariadicOutputMinArity)(const struct OrtCustomOp *op);
    int (*GetVariadicOutputHomogeneity)(const struct OrtCustomOp *op);
    OrtStatus *(*CreateKernelV2)(const struct OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                                 void **kernel);
    OrtStatus *(*KernelComputeV2)(void *op_kernel, OrtKernelContext *context);
    OrtStatus *(*InferOutputShapeFn)(const struct OrtCustomOp *op, OrtShapeInferContext *ctx);
    int (*GetStartVersion)(const struct OrtCustomOp *op);
    int (*GetEndVersion)(const struct OrtCustomOp *op);
    size_t (*GetMayInplace)(int **input_index, int **output_index);
    void (*ReleaseMayInplace)(int *input_index, int *output_index);
    size_t (*GetAliasMap)(int **input_index, int **output_index);
    void (*ReleaseAliasMap)(int *input_index, int *output_index);
} OrtCustomOp;

/* OrtApi indices (see the comment at the top) and the signatures mxport calls through them. */
enum {
    API_CreateStatus = 0,
    API_CreateCustomOpDomain = 26,
    API_CustomOpDomain_Add = 27,
    API_AddCustomOpDomain = 28,
    API_GetTensorMutableData = 51,
    API_GetDimensionsCount = 61,
    API_GetDimensions = 62,
    API_GetTensorTypeAndShape = 65,
    API_KernelInfoGetAttribute_float = 85,
    API_KernelInfoGetAttribute_int64 = 86,
    API_KernelContext_GetInputCount = 88,
    API_KernelContext_GetInput = 90,
    API_KernelContext_GetOutput = 91,
    API_ReleaseStatus = 93,
    API_ReleaseTensorTypeAndShapeInfo = 99,
    API_KernelContext_ParallelFor = 274,
};

typedef OrtStatus *(*fn_CreateStatus)(int code, const char *msg);
typedef OrtStatus *(*fn_CreateCustomOpDomain)(const char *domain, OrtCustomOpDomain **out);
typedef OrtStatus *(*fn_CustomOpDomain_Add)(OrtCustomOpDomain *domain, const OrtCustomOp *op);
typedef OrtStatus *(*fn_AddCustomOpDomain)(OrtSessionOptions *options, OrtCustomOpDomain *domain);
typedef OrtStatus *(*fn_GetTensorMutableData)(OrtValue *value, void **out);
typedef OrtStatus *(*fn_GetDimensionsCount)(const OrtTensorTypeAndShapeInfo *info, size_t *out);
typedef OrtStatus *(*fn_GetDimensions)(const OrtTensorTypeAndShapeInfo *info, int64_t *dims, size_t n);
typedef OrtStatus *(*fn_GetTensorTypeAndShape)(const OrtValue *value, OrtTensorTypeAndShapeInfo **out);
typedef OrtStatus *(*fn_KernelInfoGetAttribute_float)(const OrtKernelInfo *info, const char *name, float *out);
typedef OrtStatus *(*fn_KernelInfoGetAttribute_int64)(const OrtKernelInfo *info, const char *name, int64_t *out);
typedef OrtStatus *(*fn_KernelContext_GetInputCount)(const OrtKernelContext *ctx, size_t *out);
typedef OrtStatus *(*fn_KernelContext_GetInput)(const OrtKernelContext *ctx, size_t index, const OrtValue **out);
typedef OrtStatus *(*fn_KernelContext_GetOutput)(OrtKernelContext *ctx, size_t index, const int64_t *dims,
                                                 size_t n, OrtValue **out);
typedef void (*fn_ReleaseStatus)(OrtStatus *status);
typedef void (*fn_ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo *info);
typedef OrtStatus *(*fn_KernelContext_ParallelFor)(const OrtKernelContext *ctx, void (*fn)(void *, size_t),
                                                   size_t total, size_t num_batch, void *usr_data);

/* The function at `index` of the OrtApi table. */
static inline void *mx_api_fn(const OrtApi *api, int index) { return ((void *const *)api)[index]; }
#define ORT_CALL(api, name) ((fn_##name)mx_api_fn((api), API_##name))

#endif

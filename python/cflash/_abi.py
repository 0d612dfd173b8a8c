"""ctypes mirror of include/cflash.h, written by tools/gen_pybind.py: do not edit. After changing the header, run
`python3 tools/gen_pybind.py` (ctest's gen_pybind_check fails while this file is stale); the wheel
build writes it afresh from the header it builds."""

import ctypes as _c

# ---- DLPack (dlpack.h): its stable ABI, written in tools/gen_pybind.py ----

kDLCPU = 1
kDLCUDA = 2
kDLCUDAHost = 3
kDLInt = 0
kDLUInt = 1
kDLFloat = 2
kDLBfloat = 4


class DLDevice(_c.Structure):
    _fields_ = [
        ("device_type", _c.c_int32),
        ("device_id", _c.c_int32),
    ]


class DLDataType(_c.Structure):
    _fields_ = [
        ("code", _c.c_uint8),
        ("bits", _c.c_uint8),
        ("lanes", _c.c_uint16),
    ]


class DLTensor(_c.Structure):
    _fields_ = [
        ("data", _c.c_void_p),
        ("device", DLDevice),
        ("ndim", _c.c_int32),
        ("dtype", DLDataType),
        ("shape", _c.POINTER(_c.c_int64)),
        ("strides", _c.POINTER(_c.c_int64)),
        ("byte_offset", _c.c_uint64),
    ]

# ---- Integer #defines ----

CFLASH_VERSION_MAJOR = 0
CFLASH_VERSION_MINOR = 2
CFLASH_VERSION_PATCH = 0

# ---- Enums: each value, and ENUMS[enum name] = {value name: value} ----

# cflash_status
CFLASH_OK = 0
CFLASH_ERR_INVALID_ARGUMENT = -1
CFLASH_ERR_UNSUPPORTED = -2
CFLASH_ERR_OUT_OF_MEMORY = -3
CFLASH_ERR_BACKEND = -4
CFLASH_ERR_IO = -5

# cflash_far_keys_flag
CFLASH_FAR_KEYS_HIDES = 1
CFLASH_FAR_KEYS_ZERO = 2

# cflash_norm_type
CFLASH_NORM_RMS = 0
CFLASH_NORM_LAYER = 1

# cflash_kv_quant
CFLASH_KV_QUANT_NONE = 0
CFLASH_KV_QUANT_FP8_E4M3 = 1
CFLASH_KV_QUANT_FP8_E5M2 = 2
CFLASH_KV_QUANT_INT8 = 3

# cflash_op
CFLASH_OP_ATTN_FWD = 0
CFLASH_OP_ATTN_BWD = 1
CFLASH_OP_ATTN_VARLEN_FWD = 2
CFLASH_OP_ATTN_VARLEN_BWD = 3
CFLASH_OP_KVCACHE_FWD = 4
CFLASH_OP_ATTN_MERGE = 5
CFLASH_OP_ROTARY = 6
CFLASH_OP_NORM_FWD = 7
CFLASH_OP_NORM_BWD = 8
CFLASH_OP_COUNT = 9

ENUMS = {
    "cflash_status": {
        "CFLASH_OK": CFLASH_OK,
        "CFLASH_ERR_INVALID_ARGUMENT": CFLASH_ERR_INVALID_ARGUMENT,
        "CFLASH_ERR_UNSUPPORTED": CFLASH_ERR_UNSUPPORTED,
        "CFLASH_ERR_OUT_OF_MEMORY": CFLASH_ERR_OUT_OF_MEMORY,
        "CFLASH_ERR_BACKEND": CFLASH_ERR_BACKEND,
        "CFLASH_ERR_IO": CFLASH_ERR_IO,
    },
    "cflash_far_keys_flag": {
        "CFLASH_FAR_KEYS_HIDES": CFLASH_FAR_KEYS_HIDES,
        "CFLASH_FAR_KEYS_ZERO": CFLASH_FAR_KEYS_ZERO,
    },
    "cflash_norm_type": {
        "CFLASH_NORM_RMS": CFLASH_NORM_RMS,
        "CFLASH_NORM_LAYER": CFLASH_NORM_LAYER,
    },
    "cflash_kv_quant": {
        "CFLASH_KV_QUANT_NONE": CFLASH_KV_QUANT_NONE,
        "CFLASH_KV_QUANT_FP8_E4M3": CFLASH_KV_QUANT_FP8_E4M3,
        "CFLASH_KV_QUANT_FP8_E5M2": CFLASH_KV_QUANT_FP8_E5M2,
        "CFLASH_KV_QUANT_INT8": CFLASH_KV_QUANT_INT8,
    },
    "cflash_op": {
        "CFLASH_OP_ATTN_FWD": CFLASH_OP_ATTN_FWD,
        "CFLASH_OP_ATTN_BWD": CFLASH_OP_ATTN_BWD,
        "CFLASH_OP_ATTN_VARLEN_FWD": CFLASH_OP_ATTN_VARLEN_FWD,
        "CFLASH_OP_ATTN_VARLEN_BWD": CFLASH_OP_ATTN_VARLEN_BWD,
        "CFLASH_OP_KVCACHE_FWD": CFLASH_OP_KVCACHE_FWD,
        "CFLASH_OP_ATTN_MERGE": CFLASH_OP_ATTN_MERGE,
        "CFLASH_OP_ROTARY": CFLASH_OP_ROTARY,
        "CFLASH_OP_NORM_FWD": CFLASH_OP_NORM_FWD,
        "CFLASH_OP_NORM_BWD": CFLASH_OP_NORM_BWD,
        "CFLASH_OP_COUNT": CFLASH_OP_COUNT,
    },
}


# ---- Structs ----


class cflash_attn_params(_c.Structure):
    _fields_ = [
        ("softmax_scale", _c.c_float),  # float
        ("causal", _c.c_int),  # int
        ("window_left", _c.c_int64),  # int64_t
        ("window_right", _c.c_int64),  # int64_t
        ("softcap", _c.c_float),  # float
        ("alibi_slopes", _c.POINTER(DLTensor)),  # const DLTensor*
        ("dropout_p", _c.c_float),  # float
        ("seed", _c.c_uint64),  # uint64_t
        ("offset", _c.c_uint64),  # uint64_t
        ("deterministic", _c.c_int),  # int
        ("q_offset", _c.c_int64),  # int64_t
        ("k_offset", _c.c_int64),  # int64_t
        ("sinks", _c.POINTER(DLTensor)),  # const DLTensor*
        ("dsinks", _c.POINTER(DLTensor)),  # DLTensor*
        ("attn_bias", _c.POINTER(DLTensor)),  # const DLTensor*
        ("attn_mask", _c.POINTER(DLTensor)),  # const DLTensor*
        ("dbias", _c.POINTER(DLTensor)),  # DLTensor*
        ("block_kv_num", _c.POINTER(DLTensor)),  # const DLTensor*
        ("block_kv_indices", _c.POINTER(DLTensor)),  # const DLTensor*
        ("block_q", _c.c_int64),  # int64_t
        ("block_k", _c.c_int64),  # int64_t
        ("attention_chunk", _c.c_int64),  # int64_t
        ("block_table", _c.POINTER(DLTensor)),  # const DLTensor*
        ("seqused_q", _c.POINTER(DLTensor)),  # const DLTensor*
        ("seqused_k", _c.POINTER(DLTensor)),  # const DLTensor*
    ]


class cflash_rotary_params(_c.Structure):
    _fields_ = [
        ("interleaved", _c.c_int),  # int
        ("conjugate", _c.c_int),  # int
        ("seqlen_offset", _c.c_int64),  # int64_t
        ("seqlen_offsets", _c.POINTER(DLTensor)),  # const DLTensor*
        ("cu_seqlens", _c.POINTER(DLTensor)),  # const DLTensor*
        ("max_seqlen", _c.c_int64),  # int64_t
        ("num_heads", _c.c_int64),  # int64_t
    ]


class cflash_rotary_table_params(_c.Structure):
    _fields_ = [
        ("base", _c.c_double),  # double
        ("interpolation_factor", _c.c_double),  # double
        ("position_start", _c.c_int64),  # int64_t
        ("positions", _c.POINTER(DLTensor)),  # const DLTensor*
    ]


class cflash_norm_params(_c.Structure):
    _fields_ = [
        ("type", _c.c_int),  # cflash_norm_type
        ("eps", _c.c_float),  # float
        ("dropout_p", _c.c_float),  # float
        ("seed", _c.c_uint64),  # uint64_t
        ("offset", _c.c_uint64),  # uint64_t
    ]


class cflash_kvcache_params(_c.Structure):
    _fields_ = [
        ("k_new", _c.POINTER(DLTensor)),  # const DLTensor*
        ("v_new", _c.POINTER(DLTensor)),  # const DLTensor*
        ("rotary_cos", _c.POINTER(DLTensor)),  # const DLTensor*
        ("rotary_sin", _c.POINTER(DLTensor)),  # const DLTensor*
        ("rotary_interleaved", _c.c_int),  # int
        ("cache_seqlens", _c.POINTER(DLTensor)),  # const DLTensor*
        ("cache_seqlen", _c.c_int64),  # int64_t
        ("cache_batch_idx", _c.POINTER(DLTensor)),  # const DLTensor*
        ("cache_leftpad", _c.POINTER(DLTensor)),  # const DLTensor*
        ("block_table", _c.POINTER(DLTensor)),  # const DLTensor*
        ("num_splits", _c.c_int),  # int
        ("cu_seqlens_q", _c.POINTER(DLTensor)),  # const DLTensor*
        ("max_seqlen_q", _c.c_int64),  # int64_t
        ("cu_seqlens_k_new", _c.POINTER(DLTensor)),  # const DLTensor*
        ("cache_quant", _c.c_int),  # int
        ("k_descale", _c.POINTER(DLTensor)),  # const DLTensor*
        ("v_descale", _c.POINTER(DLTensor)),  # const DLTensor*
        ("k_scales", _c.POINTER(DLTensor)),  # const DLTensor*
        ("v_scales", _c.POINTER(DLTensor)),  # const DLTensor*
    ]


# ---- Functions: name -> (restype, argtypes); argtypes None for a variadic one ----

FUNCTIONS = {
    "cflash_status_string": (_c.c_char_p, [  # const char*
        _c.c_int,  # cflash_status s
    ]),
    "cflash_last_error": (_c.c_char_p, []),  # const char*
    "cflash_version": (_c.c_char_p, []),  # const char*
    "cflash_version_number": (_c.c_uint, []),  # unsigned
    "cflash_context_create": (_c.c_int, [  # cflash_status
        _c.POINTER(_c.c_void_p),  # cflash_context** ctx
    ]),
    "cflash_context_free": (None, [  # void
        _c.c_void_p,  # cflash_context* ctx
    ]),
    "cflash_context_set_threads": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.c_int,  # int n
    ]),
    "cflash_context_set_backend": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.c_char_p,  # const char* name
    ]),
    "cflash_context_set_cuda_stream": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.c_void_p,  # void* stream
    ]),
    "cflash_context_set_explain": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.POINTER(_c.c_char),  # char* buf
        _c.c_size_t,  # size_t len
    ]),
    "cflash_attn_params_init": (None, [  # void
        _c.POINTER(cflash_attn_params),  # cflash_attn_params* p
    ]),
    "cflash_attn_fwd": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.POINTER(cflash_attn_params),  # const cflash_attn_params* p
        _c.POINTER(DLTensor),  # const DLTensor* q
        _c.POINTER(DLTensor),  # const DLTensor* k
        _c.POINTER(DLTensor),  # const DLTensor* v
        _c.POINTER(DLTensor),  # DLTensor* out
        _c.POINTER(DLTensor),  # DLTensor* lse
    ]),
    "cflash_attn_bwd": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.POINTER(cflash_attn_params),  # const cflash_attn_params* p
        _c.POINTER(DLTensor),  # const DLTensor* dout
        _c.POINTER(DLTensor),  # const DLTensor* q
        _c.POINTER(DLTensor),  # const DLTensor* k
        _c.POINTER(DLTensor),  # const DLTensor* v
        _c.POINTER(DLTensor),  # const DLTensor* out
        _c.POINTER(DLTensor),  # const DLTensor* lse
        _c.POINTER(DLTensor),  # DLTensor* dq
        _c.POINTER(DLTensor),  # DLTensor* dk
        _c.POINTER(DLTensor),  # DLTensor* dv
    ]),
    "cflash_attn_varlen_fwd": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.POINTER(cflash_attn_params),  # const cflash_attn_params* p
        _c.POINTER(DLTensor),  # const DLTensor* q
        _c.POINTER(DLTensor),  # const DLTensor* k
        _c.POINTER(DLTensor),  # const DLTensor* v
        _c.POINTER(DLTensor),  # const DLTensor* cu_seqlens_q
        _c.POINTER(DLTensor),  # const DLTensor* cu_seqlens_k
        _c.c_int64,  # int64_t max_seqlen_q
        _c.c_int64,  # int64_t max_seqlen_k
        _c.POINTER(DLTensor),  # DLTensor* out
        _c.POINTER(DLTensor),  # DLTensor* lse
    ]),
    "cflash_attn_varlen_bwd": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.POINTER(cflash_attn_params),  # const cflash_attn_params* p
        _c.POINTER(DLTensor),  # const DLTensor* dout
        _c.POINTER(DLTensor),  # const DLTensor* q
        _c.POINTER(DLTensor),  # const DLTensor* k
        _c.POINTER(DLTensor),  # const DLTensor* v
        _c.POINTER(DLTensor),  # const DLTensor* out
        _c.POINTER(DLTensor),  # const DLTensor* lse
        _c.POINTER(DLTensor),  # const DLTensor* cu_seqlens_q
        _c.POINTER(DLTensor),  # const DLTensor* cu_seqlens_k
        _c.c_int64,  # int64_t max_seqlen_q
        _c.c_int64,  # int64_t max_seqlen_k
        _c.POINTER(DLTensor),  # DLTensor* dq
        _c.POINTER(DLTensor),  # DLTensor* dk
        _c.POINTER(DLTensor),  # DLTensor* dv
    ]),
    "cflash_attn_dropout_mask": (_c.c_int, [  # cflash_status
        _c.POINTER(cflash_attn_params),  # const cflash_attn_params* p
        _c.POINTER(DLTensor),  # DLTensor* mask
    ]),
    "cflash_attn_mask_far_keys": (_c.c_int, [  # cflash_status
        _c.POINTER(DLTensor),  # const DLTensor* bias
        _c.c_double,  # double margin
        _c.POINTER(DLTensor),  # DLTensor* keep
        _c.POINTER(_c.c_int),  # int* flags
    ]),
    "cflash_rotary_params_init": (None, [  # void
        _c.POINTER(cflash_rotary_params),  # cflash_rotary_params* p
    ]),
    "cflash_rotary_apply": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.POINTER(cflash_rotary_params),  # const cflash_rotary_params* p
        _c.POINTER(DLTensor),  # const DLTensor* x
        _c.POINTER(DLTensor),  # const DLTensor* cos
        _c.POINTER(DLTensor),  # const DLTensor* sin
        _c.POINTER(DLTensor),  # DLTensor* out
    ]),
    "cflash_rotary_table_params_init": (None, [  # void
        _c.POINTER(cflash_rotary_table_params),  # cflash_rotary_table_params* p
    ]),
    "cflash_rotary_tables": (_c.c_int, [  # cflash_status
        _c.POINTER(cflash_rotary_table_params),  # const cflash_rotary_table_params* p
        _c.POINTER(DLTensor),  # DLTensor* cos
        _c.POINTER(DLTensor),  # DLTensor* sin
    ]),
    "cflash_norm_params_init": (None, [  # void
        _c.POINTER(cflash_norm_params),  # cflash_norm_params* p
    ]),
    "cflash_norm_fwd": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.POINTER(cflash_norm_params),  # const cflash_norm_params* p
        _c.POINTER(DLTensor),  # const DLTensor* x
        _c.POINTER(DLTensor),  # const DLTensor* residual
        _c.POINTER(DLTensor),  # const DLTensor* weight
        _c.POINTER(DLTensor),  # const DLTensor* bias
        _c.POINTER(DLTensor),  # DLTensor* out
        _c.POINTER(DLTensor),  # DLTensor* residual_out
        _c.POINTER(DLTensor),  # DLTensor* mean
        _c.POINTER(DLTensor),  # DLTensor* rstd
    ]),
    "cflash_norm_bwd": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.POINTER(cflash_norm_params),  # const cflash_norm_params* p
        _c.POINTER(DLTensor),  # const DLTensor* dy
        _c.POINTER(DLTensor),  # const DLTensor* x
        _c.POINTER(DLTensor),  # const DLTensor* weight
        _c.POINTER(DLTensor),  # const DLTensor* bias
        _c.POINTER(DLTensor),  # const DLTensor* mean
        _c.POINTER(DLTensor),  # const DLTensor* rstd
        _c.POINTER(DLTensor),  # const DLTensor* dresidual_out
        _c.POINTER(DLTensor),  # DLTensor* dx
        _c.POINTER(DLTensor),  # DLTensor* dweight
        _c.POINTER(DLTensor),  # DLTensor* dbias
        _c.POINTER(DLTensor),  # DLTensor* dresidual
    ]),
    "cflash_kvcache_params_init": (None, [  # void
        _c.POINTER(cflash_kvcache_params),  # cflash_kvcache_params* kp
    ]),
    "cflash_attn_kvcache_fwd": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.POINTER(cflash_attn_params),  # const cflash_attn_params* p
        _c.POINTER(cflash_kvcache_params),  # const cflash_kvcache_params* kp
        _c.POINTER(DLTensor),  # const DLTensor* q
        _c.POINTER(DLTensor),  # DLTensor* k_cache
        _c.POINTER(DLTensor),  # DLTensor* v_cache
        _c.POINTER(DLTensor),  # DLTensor* out
        _c.POINTER(DLTensor),  # DLTensor* lse
    ]),
    "cflash_attn_merge": (_c.c_int, [  # cflash_status
        _c.c_void_p,  # cflash_context* ctx
        _c.POINTER(DLTensor),  # const DLTensor* out_partial
        _c.POINTER(DLTensor),  # const DLTensor* lse_partial
        _c.POINTER(DLTensor),  # DLTensor* out
        _c.POINTER(DLTensor),  # DLTensor* lse
    ]),
    "cflash_op_name": (_c.c_char_p, [  # const char*
        _c.c_int,  # cflash_op op
    ]),
    "cflash_report": (_c.c_size_t, [  # size_t
        _c.POINTER(_c.c_char),  # char* buf
        _c.c_size_t,  # size_t len
        _c.c_int,  # int json
    ]),
    "cflash_add_library_dir": (_c.c_int, [  # cflash_status
        _c.c_char_p,  # const char* dir
    ]),
}

// Element types of a Tensor, their sizes and names, the 16-bit float conversions, and the
// DISPATCH_* macros that turn a runtime DType into a C++ type inside a kernel.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace ls {

enum class DType : uint8_t { Float32, Float64, BFloat16, Float16, Int32, Int64, Bool, UInt8 };

inline size_t itemsize(DType d) {
  switch (d) {
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float64: case DType::Int64: return 8;
    case DType::BFloat16: case DType::Float16: return 2;
    case DType::Bool: case DType::UInt8: return 1;
  }
  return 0;
}

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::BFloat16: return "bfloat16";
    case DType::Float16: return "float16";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::Bool: return "bool";
    case DType::UInt8: return "uint8";
  }
  return "?";
}

inline bool is_floating(DType d) {
  return d == DType::Float32 || d == DType::Float64 || d == DType::BFloat16 || d == DType::Float16;
}

// Result type of a binary op on two tensors (numpy/torch-like, no value-based promotion):
// any float beats any integer, wider beats narrower, bf16 with fp16 gives float32.
DType promote_types(DType a, DType b);

// 16-bit floats are stored as raw bits; arithmetic happens in float32.
struct bf16 { uint16_t bits; };
struct fp16 { uint16_t bits; };

inline float bf16_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float fp16_to_float(uint16_t h);
uint16_t float_to_fp16(float f);

template <typename T> inline float to_float(T v) { return float(v); }
template <> inline float to_float(bf16 v) { return bf16_to_float(v.bits); }
template <> inline float to_float(fp16 v) { return fp16_to_float(v.bits); }

// Any element type to and from double: exact for every value of a float type and for integers
// up to 2^53 (cast_value below converts whole tensors).
template <typename T> inline double to_double(T v) { return double(v); }
template <> inline double to_double(bf16 v) { return bf16_to_float(v.bits); }
template <> inline double to_double(fp16 v) { return fp16_to_float(v.bits); }
template <typename T> inline T from_double(double v) { return T(v); }
template <> inline bf16 from_double<bf16>(double v) { return bf16{float_to_bf16(float(v))}; }
template <> inline fp16 from_double<fp16>(double v) { return fp16{float_to_fp16(float(v))}; }
template <> inline bool from_double<bool>(double v) { return v != 0.0; }

// One element converted by a copy or cast, as the CUDA kernels convert (cuda/elementwise.cuh):
// between integers and plain floats directly (an integer narrowing wraps, as in torch; through
// double, int64 values past 2^53 had lost their low bits first), 16-bit floats through double.
template <typename To, typename From> inline To cast_value(From v) {
  if constexpr (std::is_same_v<To, bool>) return to_double(v) != 0.0;
  else if constexpr (std::is_arithmetic_v<To> && std::is_arithmetic_v<From>) return To(v);
  else return from_double<To>(to_double(v));
}

}  // namespace ls

// DISPATCH_ALL(dtype, "op", { body using scalar_t })
#define LS_DISPATCH_CASE(enum_v, type, ...) \
  case ::ls::DType::enum_v: { using scalar_t = type; __VA_ARGS__; break; }

#define DISPATCH_ALL(dt, opname, ...)                                            \
  switch (dt) {                                                                  \
    LS_DISPATCH_CASE(Float32, float, __VA_ARGS__)                                \
    LS_DISPATCH_CASE(Float64, double, __VA_ARGS__)                               \
    LS_DISPATCH_CASE(BFloat16, ::ls::bf16, __VA_ARGS__)                          \
    LS_DISPATCH_CASE(Float16, ::ls::fp16, __VA_ARGS__)                           \
    LS_DISPATCH_CASE(Int32, int32_t, __VA_ARGS__)                                \
    LS_DISPATCH_CASE(Int64, int64_t, __VA_ARGS__)                                \
    LS_DISPATCH_CASE(Bool, bool, __VA_ARGS__)                                    \
    LS_DISPATCH_CASE(UInt8, uint8_t, __VA_ARGS__)                                \
  }

// Arithmetic kernels: float32/float64 compute, plus the integer types where it makes sense.
#define DISPATCH_FLOAT(dt, opname, ...)                                          \
  switch (dt) {                                                                  \
    LS_DISPATCH_CASE(Float32, float, __VA_ARGS__)                                \
    LS_DISPATCH_CASE(Float64, double, __VA_ARGS__)                               \
    default: ::ls::throw_dtype_error(opname, dt);                                \
  }

#define DISPATCH_NUMERIC(dt, opname, ...)                                        \
  switch (dt) {                                                                  \
    LS_DISPATCH_CASE(Float32, float, __VA_ARGS__)                                \
    LS_DISPATCH_CASE(Float64, double, __VA_ARGS__)                               \
    LS_DISPATCH_CASE(Int32, int32_t, __VA_ARGS__)                                \
    LS_DISPATCH_CASE(Int64, int64_t, __VA_ARGS__)                                \
    LS_DISPATCH_CASE(UInt8, uint8_t, __VA_ARGS__)                                \
    LS_DISPATCH_CASE(Bool, bool, __VA_ARGS__)                                    \
    default: ::ls::throw_dtype_error(opname, dt);                                \
  }

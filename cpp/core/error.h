// Exceptions raised by the core. The bindings translate them to Python exceptions of the same
// name, so user input never aborts the process. Messages name the op and the offending values.
#pragma once
#include <cstdio>
#include <type_traits>
#include <stdexcept>
#include <string>
#include <vector>

#include "dtype.h"

namespace ls {

struct ValueError : std::runtime_error { using std::runtime_error::runtime_error; };
struct TypeError : std::runtime_error { using std::runtime_error::runtime_error; };
struct IndexError : std::runtime_error { using std::runtime_error::runtime_error; };
struct RuntimeError : std::runtime_error { using std::runtime_error::runtime_error; };
struct NotImplementedError : std::runtime_error { using std::runtime_error::runtime_error; };

// Message building without iostreams: numbers are formatted with snprintf, which does not
// depend on the process's locale objects (an extension loaded into a process whose C++ runtime
// differs from the one it was built against cannot rely on them).
inline void append_to(std::string& s, const std::string& v) { s += v; }
inline void append_to(std::string& s, const char* v) { s += v; }
inline void append_to(std::string& s, char v) { s += v; }
inline void append_to(std::string& s, bool v) { s += v ? "true" : "false"; }
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
void append_to(std::string& s, T v) {
  char buf[32];
  if constexpr (std::is_floating_point_v<T>) std::snprintf(buf, sizeof buf, "%g", double(v));
  else if constexpr (std::is_signed_v<T>) std::snprintf(buf, sizeof buf, "%lld", (long long)v);
  else std::snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
  s += buf;
}

template <typename... Args>
std::string cat(const Args&... args) {
  std::string s;
  (append_to(s, args), ...);
  return s;
}

std::string shape_str(const std::vector<int64_t>& shape);

[[noreturn]] inline void throw_dtype_error(const char* op, DType dt) {
  throw TypeError(cat(op, ": dtype ", dtype_name(dt), " is not supported"));
}

}  // namespace ls

// LS_CHECK(cond, ExceptionType, message parts...)
#define LS_CHECK(cond, Err, ...) \
  do { if (!(cond)) throw ::ls::Err(::ls::cat(__VA_ARGS__)); } while (0)

// Exceptions raised by the core. The bindings translate them to Python exceptions of the same
// name, so user input never aborts the process. Messages name the op and the offending values.
#pragma once
#include <sstream>
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

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

std::string shape_str(const std::vector<int64_t>& shape);

[[noreturn]] inline void throw_dtype_error(const char* op, DType dt) {
  throw TypeError(cat(op, ": dtype ", dtype_name(dt), " is not supported"));
}

}  // namespace ls

// LS_CHECK(cond, ExceptionType, message parts...)
#define LS_CHECK(cond, Err, ...) \
  do { if (!(cond)) throw ::ls::Err(::ls::cat(__VA_ARGS__)); } while (0)

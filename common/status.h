// Error values for bad input, and check macros for broken internal invariants.
//
// Bad input (a file, a flag, a YAML field) is reported as an `Error` whose message names the file,
// the field, what was expected and what was found, on one line. Functions that can fail on input
// return `Status` or `Result<T>`; the command prints `error.message()` and exits non-zero.
// A broken invariant is a bug, not bad input: it aborts through KVP_CHECK in every build type.
#pragma once

#include <fmt/format.h>

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace kvp {

class Error {
 public:
  explicit Error(std::string message) : message_(std::move(message)) {}
  const std::string& message() const { return message_; }

  // Returns this error with `context: ` in front, e.g. the file an inner parser was reading.
  Error with_context(std::string_view context) const {
    return Error(fmt::format("{}: {}", context, message_));
  }

 private:
  std::string message_;
};

template <typename... Args>
Error make_error(fmt::format_string<Args...> format, Args&&... args) {
  return Error(fmt::format(format, std::forward<Args>(args)...));
}

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return !error_.has_value(); }
  const Error& error() const { return *error_; }

 private:
  std::optional<Error> error_;
};

inline Status ok_status() { return Status(); }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : value_(std::move(error)) {}  // NOLINT: implicit by design
  Result(Status status);  // REQUIRES: !status.ok()

  bool ok() const { return std::holds_alternative<T>(value_); }
  const Error& error() const { return std::get<Error>(value_); }
  Status status() const { return ok() ? Status() : Status(error()); }

  T& value() & { return std::get<T>(value_); }
  const T& value() const& { return std::get<T>(value_); }
  T&& value() && { return std::get<T>(std::move(value_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Error> value_;
};

[[noreturn]] void check_failed(const char* file, int line, const char* condition,
                               const std::string& message);

template <typename T>
Result<T>::Result(Status status) : value_(status.error()) {}

}  // namespace kvp

#define KVP_CONCAT_INNER_(a, b) a##b
#define KVP_CONCAT_(a, b) KVP_CONCAT_INNER_(a, b)

// Aborts with file, line and condition when `cond` is false, in every build type.
#define KVP_CHECK(cond, ...)                                                        \
  do {                                                                              \
    if (!(cond)) [[unlikely]] {                                                     \
      ::kvp::check_failed(__FILE__, __LINE__, #cond, ::fmt::format("" __VA_ARGS__)); \
    }                                                                               \
  } while (0)

// Returns the error of a Status or Result expression from the enclosing function.
#define KVP_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    if (auto kvp_status_ = (expr); !kvp_status_.ok()) \
      return kvp_status_.error();                  \
  } while (0)

// `KVP_ASSIGN_OR_RETURN(auto x, f());` declares x from a Result, or returns its error.
#define KVP_ASSIGN_OR_RETURN(lhs, expr) \
  KVP_ASSIGN_OR_RETURN_IMPL_(KVP_CONCAT_(kvp_result_, __LINE__), lhs, expr)
#define KVP_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.error();               \
  lhs = std::move(tmp).value()

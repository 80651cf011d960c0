#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "common/file_util.h"
#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"

namespace kvp::test {
namespace fs = std::filesystem;

namespace {

struct TempDirs {
  std::vector<fs::path> dirs;
  ~TempDirs() {
    std::error_code ec;
    for (const fs::path& d : dirs) fs::remove_all(d, ec);
  }
};
TempDirs temp_dirs;

[[noreturn]] void fatal(const std::string& message) {
  std::fprintf(stderr, "test support: %s\n", message.c_str());
  std::abort();
}

}  // namespace

const LoadedModel& default_model() {
  static const LoadedModel* model = [] {
    auto loaded = load_model("", "");
    if (!loaded.ok()) fatal("the default model is needed: " + loaded.error().message());
    return new LoadedModel(std::move(loaded).value());
  }();
  return *model;
}

const ModelConfig& default_config() { return default_model().weights.config(); }

std::string shared_model_dir() {
  const std::vector<std::string> dirs = model_search_dirs();
  std::error_code ec;
  for (const std::string& dir : dirs) {
    if (dir != embedded_model_dir() && fs::is_directory(dir, ec)) return fs::absolute(dir, ec).string();
  }
  return "";
}

std::string missing_fixture(const std::string& relative) {
  const std::string dir = shared_model_dir();
  std::error_code ec;
  if (!dir.empty() && fs::exists(fs::path(dir) / relative, ec)) return "";
  return "test fixture " + relative + " not found" + (dir.empty() ? "" : " in " + dir) +
         ": put the project's shared models folder (stories260K/, llama-2-tiny-random/, vocab/) at "
         "../shared/models beside the checkout, or point KVPLAN_MODEL_DIR at one";
}

ScopedEnv::ScopedEnv(const char* name, const std::string& value) : name_(name) {
  if (const char* old = std::getenv(name)) had_old_ = true, old_ = old;
  ::setenv(name, value.c_str(), 1);
}

ScopedEnv::~ScopedEnv() {
  if (had_old_) {
    ::setenv(name_.c_str(), old_.c_str(), 1);
  } else {
    ::unsetenv(name_.c_str());
  }
}

std::vector<float> one_pass_logits(const ModelWeights& weights, const std::vector<int32_t>& tokens, int threads) {
  CpuBackend backend(weights, threads);
  Decoder decoder(backend);
  backend.reset_sequences({full_cache_budgets(weights.config(), static_cast<int>(tokens.size()))});
  StepRows rows;
  std::vector<int32_t> logit_rows;
  for (size_t t = 0; t < tokens.size(); ++t) {
    rows.add(tokens[t], static_cast<int32_t>(t), 0);
    logit_rows.push_back(static_cast<int32_t>(t));
  }
  std::vector<float> out;
  decoder.forward(rows, logit_rows, &out);
  return out;
}

bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && *ci != '\0' && std::string(ci) != "false" && std::string(ci) != "0";
}

const Oracle& default_model_oracle() {
  static const Oracle* oracle = [] {
    const fs::path readme = fs::path(default_model().files.model_path).parent_path() / "README.md";
    auto text = read_file_text(readme.string());
    if (!text.ok()) fatal(text.error().message());
    auto* o = new Oracle;
    std::smatch m;
    const std::regex ids_re("token ids begin\\s*`([0-9 ]+)`");
    if (std::regex_search(*text, m, ids_re)) {
      std::istringstream in(m[1].str());
      for (int32_t id; in >> id;) o->first_ids.push_back(id);
    }
    const std::regex text_re("the text printed is:\\s*```\\n([\\s\\S]*?)\\n```");
    if (std::regex_search(*text, m, text_re)) o->text = m[1].str();
    if (o->first_ids.empty() || o->text.empty()) {
      fatal(readme.string() + ": could not find the greedy oracle (token ids and text)");
    }
    return o;
  }();
  return *oracle;
}

std::string make_temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  const char* base = std::getenv("TEST_TMPDIR");
  fs::path dir = fs::path(base ? base : fs::temp_directory_path().string()) /
                 ("kvplan-test-" + std::to_string(::getpid()) + "-" + tag + "-" +
                  std::to_string(counter++));
  fs::remove_all(dir);
  fs::create_directories(dir);
  temp_dirs.dirs.push_back(dir);
  return dir.string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

CliResult run_kvplan(const std::string& args) {
  const std::string dir = make_temp_dir("cli");
  const std::string out_path = dir + "/stdout", err_path = dir + "/stderr";
  const std::string command = shell_quote(KVPLAN_BINARY) + " " + args + " >" +
                              shell_quote(out_path) + " 2>" + shell_quote(err_path) + " </dev/null";
  const int status = std::system(command.c_str());
  CliResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_bytes(out_path);
  r.err = read_bytes(err_path);
  fs::remove_all(dir);
  return r;
}

void expect_one_line_error(const std::string& args, const std::string& expect) {
  const CliResult r = run_kvplan(args);
  EXPECT_NE(r.exit_code, 0) << args;
  EXPECT_NE(r.err.find(expect), std::string::npos) << args << ": " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << args << ": " << r.err;
}

int line_count(const std::string& s) {
  if (s.empty()) return 0;
  int n = 0;
  for (char c : s) n += c == '\n';
  return n + (s.back() == '\n' ? 0 : 1);
}

}  // namespace kvp::test

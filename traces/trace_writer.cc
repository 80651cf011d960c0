#include "traces/trace_writer.h"

#include <unistd.h>

#include <filesystem>

#include "common/file_util.h"

namespace kvp {
namespace fs = std::filesystem;

Result<TraceWriter> TraceWriter::create(const std::string& dir, bool overwrite) {
  std::error_code ec;
  const fs::path target = fs::path(dir).lexically_normal();
  if (target.filename().empty()) return make_error("--out '{}': expected a directory name", dir);
  if (fs::exists(target, ec) && !overwrite) {
    return make_error("{}: already exists; choose another --out or pass --force to replace it", dir);
  }
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec)) {
    return make_error("{}: parent directory {} does not exist", dir, parent.string());
  }
  TraceWriter w;
  w.dir_ = target.string();
  w.overwrite_ = overwrite;
  w.staging_ = (parent / fmt::format(".{}.partial-{}", target.filename().string(), ::getpid())).string();
  fs::remove_all(w.staging_, ec);
  if (!fs::create_directory(w.staging_, ec)) {
    return make_error("{}: cannot create staging directory {}: {}", dir, w.staging_, ec.message());
  }
  return w;
}

TraceWriter::TraceWriter(TraceWriter&& o) noexcept
    : dir_(std::move(o.dir_)),
      staging_(std::exchange(o.staging_, std::string())),
      overwrite_(o.overwrite_),
      finished_(o.finished_),
      projections_(std::move(o.projections_)),
      sequences_(std::move(o.sequences_)) {}

TraceWriter::~TraceWriter() {
  if (!finished_ && !staging_.empty()) {
    std::error_code ec;
    fs::remove_all(staging_, ec);
  }
}

Status TraceWriter::add_sequence(const SafetensorsWriter& file, int prompt_len, int length) {
  TraceSequenceEntry e{.file = fmt::format("seq-{:05d}.safetensors", sequences_.size()),
                       .prompt_len = prompt_len, .length = length};
  KVP_ASSIGN_OR_RETURN(e.sha256, file.write((fs::path(staging_) / e.file).string()));
  sequences_.push_back(std::move(e));
  return ok_status();
}

Status TraceWriter::set_projections(const SafetensorsWriter& file) {
  projections_.file = kTraceProjectionsName;
  KVP_ASSIGN_OR_RETURN(projections_.sha256,
                       file.write((fs::path(staging_) / projections_.file).string()));
  return ok_status();
}

Status TraceWriter::finish(TraceManifest manifest) {
  KVP_CHECK(!finished_ && !projections_.file.empty() && !sequences_.empty());
  manifest.projections = projections_;
  manifest.sequences = sequences_;
  KVP_RETURN_IF_ERROR(write_file_atomic((fs::path(staging_) / kTraceManifestName).string(),
                                        manifest.to_yaml()));
  std::error_code ec;
  std::string old;
  if (fs::exists(dir_, ec)) {
    KVP_CHECK(overwrite_);
    old = staging_ + ".old";
    fs::rename(dir_, old, ec);
    if (ec) return make_error("{}: cannot move the old trace aside: {}", dir_, ec.message());
  }
  fs::rename(staging_, dir_, ec);
  if (ec) return make_error("{}: cannot move the finished trace into place: {}", dir_, ec.message());
  finished_ = true;
  if (!old.empty()) fs::remove_all(old, ec);
  return ok_status();
}

}  // namespace kvp

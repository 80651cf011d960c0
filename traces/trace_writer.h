// Writes a trace directory so that it appears whole or not at all: files go into a hidden
// staging directory beside the target, the manifest is written last, and the staging directory is
// renamed to the target by finish(). A writer destroyed before finish() removes what it wrote.
#pragma once

#include <string>

#include "traces/manifest.h"
#include "traces/safetensors_writer.h"

namespace kvp {

class TraceWriter {
 public:
  // Fails if `dir` exists, unless `overwrite` (then the old directory is replaced at finish()).
  static Result<TraceWriter> create(const std::string& dir, bool overwrite);

  TraceWriter(TraceWriter&&) noexcept;
  TraceWriter& operator=(TraceWriter&&) = delete;
  ~TraceWriter();

  // Writes seq-NNNNN.safetensors (NNNNN = sequences written so far).
  Status add_sequence(const SafetensorsWriter& file, int prompt_len, int length);
  Status set_projections(const SafetensorsWriter& file);

  // Fills the manifest's file entries, writes manifest.yaml and moves the directory into place.
  Status finish(TraceManifest manifest);

  const std::string& staging_dir() const { return staging_; }

 private:
  TraceWriter() = default;
  std::string dir_;
  std::string staging_;
  bool overwrite_ = false;
  bool finished_ = false;
  TraceFileEntry projections_;
  std::vector<TraceSequenceEntry> sequences_;
};

}  // namespace kvp

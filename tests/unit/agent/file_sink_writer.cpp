// Helper for file_sink_crash_test: commits generations to a directory in a tight loop until it
// is killed. Usage: file_sink_writer DIR MATERIALS_FILE KEEP
#include "agent/file_sink.h"
#include "core/logging.h"
#include "tests/unit/agent/test_material.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

int main(int argc, char** argv) {
  using namespace certagent;
  if (argc != 4) {
    std::fprintf(stderr, "usage: file_sink_writer DIR MATERIALS_FILE KEEP\n");
    return 2;
  }
  log::init({"warn", "text"});
  std::ifstream in(argv[2], std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  auto materials = test::decode_materials(ss.str());
  if (materials.empty()) {
    std::fprintf(stderr, "no materials in %s\n", argv[2]);
    return 2;
  }
  config::FilesConfig files;
  files.dir = argv[1];
  files.keep = static_cast<std::uint32_t>(std::atoi(argv[3]));
  FileSink sink(files);
  // Start at a different material each run so consecutive runs differ.
  std::size_t i = static_cast<std::size_t>(std::rand()) ^ static_cast<std::size_t>(::getpid());
  while (true) {
    auto r = sink.commit(materials[i++ % materials.size()]);
    if (!r) {
      std::fprintf(stderr, "commit failed: %s\n", r.error().message.c_str());
      return 3;
    }
  }
}

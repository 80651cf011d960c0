// The kvplan front end's precompiled header (tools/CMakeLists.txt): CLI11, which every command
// includes and which costs seconds to parse, nlohmann-json and the commands' shared declarations.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "tools/kvplan/command.h"
#include "tools/kvplan/plan_flags.h"

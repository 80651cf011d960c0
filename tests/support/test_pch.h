// The precompiled header every test executable shares (tests/CMakeLists.txt): the includes that
// most test files parse, GoogleTest and nlohmann-json above all.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "executor/cpu/cpu_backend.h"
#include "executor/generator.h"
#include "planner/plan/plan.h"
#include "tests/support/test_support.h"

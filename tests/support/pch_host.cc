// The target that owns the tests' precompiled header (tests/support/test_pch.h); the test
// executables reuse it. It runs no test.
int main() { return 0; }

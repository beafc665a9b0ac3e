#pragma once
// What both CuTe oracle programs share: a tally of checks and mismatches, their cases, and a
// main that runs the case named on the command line (or `all`) and prints the summary line
// the pytest reads: "<program>: N checks, M mismatches".

#include <cstdio>
#include <cstring>
#include <string>

struct Tally {
  int checks = 0;
  int mismatches = 0;

  void check(bool ok, const std::string& what) {
    ++checks;
    if (!ok) {
      ++mismatches;
      std::printf("MISMATCH %s\n", what.c_str());
    }
  }
};

struct OracleCase {
  const char* name;
  int checks;  // what a complete comparison of this case counts
  void (*run)(Tally&, const char* name);
};

// Exit 0 when every selected case ran all its checks without a mismatch; 2 for an unknown name.
template <size_t kCount>
int run_oracle_cases(const char* program, const OracleCase (&cases)[kCount], int argc,
                     char** argv) {
  const char* selected = argc > 1 ? argv[1] : "all";
  const bool all = std::strcmp(selected, "all") == 0;
  Tally tally;
  int expected = 0;
  for (const OracleCase& c : cases) {
    if (!all && std::strcmp(selected, c.name) != 0) continue;
    c.run(tally, c.name);
    expected += c.checks;
  }
  if (expected == 0) {
    std::printf("unknown case '%s'\n", selected);
    return 2;
  }
  std::printf("%s: %d checks, %d mismatches\n", program, tally.checks, tally.mismatches);
  if (tally.checks != expected) {
    std::printf("expected %d checks\n", expected);
    return 1;
  }
  return tally.mismatches == 0 ? 0 : 1;
}

#!/usr/bin/env bash
# Runs every test of the solution (the README's test command) and ends with one line
# "N passed, N failed" summed from the TRX results, which survive a test host crash better than
# the console summary. Exit code: non-zero if anything failed or the run itself broke.
set -uo pipefail
cd "$(dirname "$0")"

results="${TEST_RESULTS_DIR:-$(mktemp -d)}"
rm -f "$results"/*.trx 2>/dev/null

# Built first (in parallel), then the test projects run one after another (-m:1): each suite has the machine to
# itself, so one suite's load or resets (the kernel's counters are machine-wide) never land in another's timing
# bounds or counter windows.
dotnet build SafeSockets.sln -c Release
rc=$?
if [ "$rc" -eq 0 ]; then
  dotnet test SafeSockets.sln -c Release --no-build -m:1 \
    --logger "trx" --results-directory "$results" \
    --blame-hang-timeout 3m "$@"
  rc=$?
fi

passed=0
failed=0
shopt -s nullglob
trx_files=("$results"/*.trx)
for trx in "${trx_files[@]}"; do
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -n 1)
  p=$(sed -n 's/.* passed="\([0-9]*\)".*/\1/p' <<<"$counters")
  f=$(sed -n 's/.* failed="\([0-9]*\)".*/\1/p' <<<"$counters")
  e=$(sed -n 's/.* error="\([0-9]*\)".*/\1/p' <<<"$counters")
  t=$(sed -n 's/.* timeout="\([0-9]*\)".*/\1/p' <<<"$counters")
  a=$(sed -n 's/.* aborted="\([0-9]*\)".*/\1/p' <<<"$counters")
  passed=$((passed + ${p:-0}))
  failed=$((failed + ${f:-0} + ${e:-0} + ${t:-0} + ${a:-0}))
done

if [ ${#trx_files[@]} -eq 0 ] || [ "$passed" -eq 0 ]; then
  echo "test.sh: no test results were produced (dotnet test exit code $rc)" >&2
  [ "$rc" -eq 0 ] && rc=1
fi
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
  # The run broke outside any single test (build error, host crash): count it as a failure.
  failed=1
fi

echo "${passed} passed, ${failed} failed"
exit "$rc"

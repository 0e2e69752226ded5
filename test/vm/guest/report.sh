# shellcheck shell=sh
# Sourced by the guest's scenarios: each check's outcome as a line on the
# results disk (the first virtual disk), which the host reads after the guest
# powered off: "ok NAME" or "not ok NAME: WHY", and "done" at the end.
RESULTS_DISK=${RESULTS_DISK:-/dev/vda}
results=/tmp/results

report() {
  echo "$1" >>"$results"
  echo "vmtest: $1"
  dd if="$results" of="$RESULTS_DISK" conv=fsync 2>/dev/null
}

pass() { report "ok $1"; }

# fail NAME WHY: WHY is folded onto one line.
fail() { report "not ok $1: $(printf '%s' "$2" | tr '\n' ' ' | cut -c1-600)"; }

# check NAME COMMAND...: passes when COMMAND exits 0.
check() {
  name=$1
  shift
  if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "exit $?: $out"; fi
}

# check_not NAME COMMAND...: passes when COMMAND fails.
check_not() {
  name=$1
  shift
  if out=$("$@" 2>&1); then fail "$name" "succeeded: $out"; else pass "$name"; fi
}

finish() { report "done"; }

# shellcheck shell=sh
# Sourced by the nbd driver's scenarios (after report.sh): where geom-rowr
# keeps its state in the guest, and what they check at the end of each part.
run=/run/geom-rowr
w=/tmp/w
# The device's nbd number, for its sysfs directory.
sysfs_of() { echo "/sys/block/${1#/dev/}"; }

# Lists what is left of ours: a connected nbd device, a daemon process,
# run state (logs aside), a mount under $w.
leftovers() {
  for b in /sys/block/nbd*; do
    [ -e "$b/pid" ] && echo "connected ${b##*/} (pid $(cat "$b/pid"))"
  done
  for p in /proc/[0-9]*; do
    cmd=$( (tr '\0' ' ' <"$p/cmdline") 2>/dev/null) || continue
    case $cmd in */lib/daemon/main.js*) echo "process ${p#/proc/}: $cmd" ;; esac
  done
  for f in "$run"/*; do
    case $f in "$run/*"|*.log) ;; *) echo "run state $f" ;; esac
  done
  grep " $w" /proc/mounts | sed 's/^/mount /'
}

check_nothing_left() {
  left=$(leftovers)
  if [ -z "$left" ]; then pass "$1"; else fail "$1" "$left"; fi
}

# json FILE EXPRESSION: EXPRESSION of the parsed JSON object s, printed.
json() { node -e 'const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); console.log(eval(process.argv[2]))' "$1" "$2"; }

# create_or_finish NAME WHAT ARGS...: runs geom-rowr create ARGS, sets dev to
# the device it printed and passes WHAT; if it printed no nbd device, fails
# WHAT with its output and the daemon's log, and ends the scenario.
create_or_finish() {
  name=$1
  what=$2
  shift 2
  out=$(geom-rowr create "$@" 2>&1)
  dev=$(echo "$out" | tail -n 1)
  case $dev in
    /dev/nbd[0-9]*) pass "$what ($dev)" ;;
    *)
      fail "$what" "$out"
      cat "$run/$name.log" 2>/dev/null
      finish
      exit
      ;;
  esac
}

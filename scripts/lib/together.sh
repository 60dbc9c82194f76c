# Sourced by scripts/ci.sh: runs long, independent CI jobs side by side so their waits
# overlap (each Autobahn runner is one single-threaded Python process; the servers under
# test are cheap), and keeps each job's output readable: every job writes its own log under
# target/ci-logs/, and once all have ended each log is printed whole, one after the other,
# under a line with the job's result, wall time and CPU time.
#
# usage: together NAME 'COMMAND' [NAME 'COMMAND']...
# Returns 1 when any job failed (after printing every log), 0 otherwise.
together() {
  local dir="${CARGO_TARGET_DIR:-target}/ci-logs" names=() name rc secs cpu failed=()
  mkdir -p "$dir"
  while (($# >= 2)); do
    names+=("$1")
    rm -f "$dir/$1.status"
    (
      t0=$(date +%s) rc=0
      bash -c "$2" >"$dir/$1.log" 2>&1 || rc=$?
      # CPU seconds of the job and all it waited for (user + system), then the wall time.
      # (`times` here, not in a $(...) subshell, which has no children of its own.)
      times >"$dir/$1.status"
      cpu=$(awk 'NR == 2 { gsub(/[ms]/, " "); print int($1 * 60 + $2 + $3 * 60 + $4) }' "$dir/$1.status")
      echo "$rc $(($(date +%s) - t0)) $cpu" >"$dir/$1.status"
    ) &
    shift 2
  done
  wait
  for name in "${names[@]}"; do
    read -r rc secs cpu <"$dir/$name.status" || { rc=1 secs=? cpu=?; }
    if ((rc == 0)); then
      printf '\n--> %s: passed in %ss, %ss of CPU (log %s)\n' "$name" "$secs" "$cpu" "$dir/$name.log"
    else
      printf '\n--> %s: FAILED (exit %s) after %ss, %ss of CPU (log %s)\n' "$name" "$rc" "$secs" "$cpu" "$dir/$name.log"
      failed+=("$name")
    fi
    sed 's/^/    /' "$dir/$name.log"
  done
  if ((${#failed[@]})); then
    printf '\ntogether: failed: %s\n' "${failed[*]}"
    return 1
  fi
}

#!/usr/bin/env bash
# Measures the throughput of the VM's redactor (src/remote/vm/lib.sh, exec_redactor), which
# every byte an agent prints passes through on its way to output.log (docs/performance.md).
# Usage: scripts/bench-redactor.sh [MEGABYTES (50)] [RUNS (5)]
# For two shapes of agent-like output (below), writes MEGABYTES of it (some lines holding
# the key or an `sk-ant-` key) to a temp file, then times, RUNS times each, the
# same bytes written through a pipe into a file by `cat` (the baseline: the pipe and the file
# alone) and by the redactor, holding a key and a notify URL as a supervisor does. Prints the
# median wall time and throughput of each, and the user+system CPU time of the redactor.
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-50}
runs=${2:-5}
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
key='bench-key-0123456789abcdef'

# The input: base64 of random bytes cut into lines, of 0 to 400 characters with one in a
# thousand of 200,000 (mixed), or all of 79 (short: the most lines, so the most writes).
make_input() {
  head -c $((mb * 1024 * 1024 * 3 / 4)) /dev/urandom | base64 -w 0 |
    LC_ALL=C awk -v key="$key" -v short="$1" 'BEGIN { srand(7) }
      { i = 1; n = length($0)
        while (i <= n) {
          len = short ? 79 : int(rand() * 400); if (!short && rand() < 0.001) len = 200000
          line = substr($0, i, len); i += len
          r = rand()
          if (r < 0.01) line = line " " key
          else if (r < 0.02) line = line " sk-ant-api03-" substr(line, 1, 20)
          printf "%s\n", line
        } }' > "$work/input"
}

# Median of the numbers on stdin.
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Runs "$@" RUNS times with the input on a pipe and the output in a file; prints the median
# wall seconds, then the median CPU seconds (user + system of the children).
timed() {
  local i t0 t1 walls='' cpus='' before after me=$BASHPID
  for ((i = 0; i < runs; i++)); do
    rm -f -- "$work/out"
    before=$(awk '{ print $14 + $15 + $16 + $17 }' /proc/$me/stat)
    t0=$(date +%s%N)
    # The input comes through a pipe, as the agent's output does.
    # shellcheck disable=SC2002
    cat "$work/input" | "$@" >> "$work/out"
    t1=$(date +%s%N)
    after=$(awk '{ print $14 + $15 + $16 + $17 }' /proc/$me/stat)
    walls+="$(((t1 - t0) / 1000000))"$'\n'
    cpus+="$(((after - before) * 1000 / $(getconf CLK_TCK)))"$'\n'
  done
  printf '%s %s\n' "$(median <<< "$walls")" "$(median <<< "$cpus")"
}

redactor() {
  # shellcheck source=src/remote/vm/lib.sh
  . src/remote/vm/lib.sh
  # shellcheck disable=SC2034 # read by lib.sh
  redact_key=$key
  # shellcheck disable=SC2034 # read by lib.sh
  redact_url='https://hooks.example.com/services/T000/B000/XXXXXXXXXXXXXXXX'
  exec_redactor
}

mbps() { awk -v b="$size" -v ms="$1" 'BEGIN { printf "%.0f", b / 1048576 / (ms / 1000) }'; }
for shape in mixed short; do
  make_input "$([ "$shape" = short ] && echo 1 || echo 0)"
  size=$(stat -c %s "$work/input")
  lines=$(wc -l < "$work/input")
  read -r cat_ms cat_cpu < <(timed cat)
  read -r red_ms red_cpu < <(timed redactor)
  redacted=$(grep -c 'REDACTED' "$work/out" || true)
  printf '%s lines: %d bytes, %d lines, %d of them redacted; medians of %d runs\n' \
    "$shape" "$size" "$lines" "$redacted" "$runs"
  printf '  cat (baseline): %6d ms wall  %4s MB/s  (CPU %d ms)\n' "$cat_ms" "$(mbps "$cat_ms")" "$cat_cpu"
  printf '  redactor:       %6d ms wall  %4s MB/s  (CPU %d ms, with cat)\n' "$red_ms" "$(mbps "$red_ms")" "$red_cpu"
done

# shellcheck shell=bash
# amplihack remote: helpers shared by the control script and the session supervisor.
# Both are sent to the VM with this file in front of them; run from the source tree, they
# source it. The layout they maintain and their contracts: docs/remote-layout.md.

# Read by the scripts that use these helpers (shellcheck sees each file alone).
# shellcheck disable=SC2034
AMPLIHACK_LIB=1
# Where a VM keeps everything of ours (except the workspaces).
# shellcheck disable=SC2034
base="$HOME/.amplihack/remote"
# Identities of processes are only comparable within one boot: pids and start times restart.
boot_id=
{ IFS= read -r boot_id < /proc/sys/kernel/random/boot_id; } 2>/dev/null

# Reads the first line of file $2 into variable $1 (empty when the file is missing).
read_into() {
  local _line=
  { IFS= read -r _line < "$2"; } 2>/dev/null
  printf -v "$1" '%s' "$_line"
}

# Writes $2 and a newline to file $1 so a reader sees the old file or the new, never a part.
write_atomic() {
  printf '%s\n' "$2" > "$1.part.$$" && mv -f -- "$1.part.$$" "$1"
}

now_utc() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# The start time of process $1 in clock ticks since boot (field 22 of /proc/PID/stat). The
# command name (field 2) may hold spaces and parentheses, so fields are counted after its last ')'.
start_ticks() {
  local stat=
  { IFS= read -r stat < "/proc/$1/stat"; } 2>/dev/null || return 1
  stat=${stat##*) }
  local -a fields
  read -r -a fields <<< "$stat"
  [ -n "${fields[19]:-}" ] || return 1
  printf '%s' "${fields[19]}"
}

# What tells process $1 apart from any later process that reuses its pid: boot and start time.
identity_of() {
  local ticks
  ticks=$(start_ticks "$1") || return 1
  printf '%s %s' "$boot_id" "$ticks"
}

# Whether the process recorded as pid $1 with identity $2 is still that process.
process_alive() {
  local pid=$1 id=$2 ticks
  [ -n "$pid" ] && [ -n "$id" ] && [ "${id% *}" = "$boot_id" ] || return 1
  ticks=$(start_ticks "$pid") || return 1
  [ "$ticks" = "${id#* }" ]
}

# Whether the process group led by the process recorded as pid $1 with identity $2 still has
# members. The leader may have exited while its children live on: Linux does not hand out a
# pid again while a process group of that number exists, so a live group is ours as long as
# the pid is not in use by another process.
group_alive() {
  local pid=$1 id=$2 ticks
  [ -n "$pid" ] && [ -n "$id" ] && [ "${id% *}" = "$boot_id" ] || return 1
  if ticks=$(start_ticks "$pid"); then
    [ "$ticks" = "${id#* }" ] || return 1
  fi
  kill -0 -- "-$pid" 2>/dev/null
}

# Ends a verified process group: signal $3 (TERM or KILL), then SIGKILL for whatever still
# lives after $4 tenths of a second. Prints `signalled`/`escalated` lines when $5 is set.
end_group() {
  local pid=$1 id=$2 signal=$3 ticks=$4 report=${5:-} n=0
  group_alive "$pid" "$id" || return 0
  kill "-$signal" -- "-$pid" 2>/dev/null && [ -n "$report" ] && printf 'signalled\t%s\n' "$signal"
  while group_alive "$pid" "$id" && [ "$n" -lt "$ticks" ]; do
    sleep 0.1
    n=$((n + 1))
  done
  if group_alive "$pid" "$id"; then
    kill -KILL -- "-$pid" 2>/dev/null
    [ -n "$report" ] && printf 'escalated\tKILL\n'
    n=0
    while group_alive "$pid" "$id" && [ "$n" -lt 50 ]; do
      sleep 0.1
      n=$((n + 1))
    done
  fi
  return 0
}

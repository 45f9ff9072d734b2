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
  # A zombie has exited: it only waits to be reaped (forever, where init does not reap).
  [ "${fields[0]:-}" != Z ] || return 1
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

# Whether a live process of process group $1 carries session $2's mark (AMPLIHACK_SESSION_ID,
# which the agent and everything it starts inherit).
group_carries_session() {
  local pgid=$1 session=$2 p stat
  local -a f
  for p in /proc/[0-9]*; do
    { IFS= read -r stat < "$p/stat"; } 2> /dev/null || continue
    stat=${stat##*) }
    read -r -a f <<< "$stat"
    if [ "${f[0]}" != Z ] && [ "${f[2]}" = "$pgid" ] &&
      tr '\0' '\n' < "$p/environ" 2> /dev/null | grep -qxF "AMPLIHACK_SESSION_ID=$session"; then
      return 0
    fi
  done
  return 1
}

# Whether the process group led by the process recorded as pid $1 with identity $2 still has
# members. The leader may have exited while its children live on; the group's number may then
# have gone to another group (pids are reused, quickly where pid_max is 32768), so without its
# leader a group is taken for session $3's only when a member carries that session's mark.
group_alive() {
  local pid=$1 id=$2 session=${3:-} ticks
  [ -n "$pid" ] && [ -n "$id" ] && [ "${id% *}" = "$boot_id" ] || return 1
  if ticks=$(start_ticks "$pid"); then
    [ "$ticks" = "${id#* }" ] || return 1
    kill -0 -- "-$pid" 2> /dev/null
    return
  fi
  kill -0 -- "-$pid" 2> /dev/null || return 1
  [ -z "$session" ] || group_carries_session "$pid" "$session"
}

# Ends a verified process group (leader pid $1, identity $2, of session $6): signal $3 (TERM or
# KILL), then SIGKILL for whatever still lives after $4 tenths of a second. Prints
# `signalled`/`escalated` lines when $5 is set.
end_group() {
  local pid=$1 id=$2 signal=$3 ticks=$4 report=${5:-} session=${6:-} n=0
  group_alive "$pid" "$id" "$session" || return 0
  kill "-$signal" -- "-$pid" 2>/dev/null && [ -n "$report" ] && printf 'signalled\t%s\n' "$signal"
  while group_alive "$pid" "$id" "$session" && [ "$n" -lt "$ticks" ]; do
    sleep 0.1
    n=$((n + 1))
  done
  if group_alive "$pid" "$id" "$session"; then
    kill -KILL -- "-$pid" 2>/dev/null
    [ -n "$report" ] && printf 'escalated\tKILL\n'
    n=0
    while group_alive "$pid" "$id" "$session" && [ "$n" -lt 50 ]; do
      sleep 0.1
      n=$((n + 1))
    done
  fi
  return 0
}

# The agent's exit status (into `rc`), once the supervisor has seen it gone. bash can lose track
# of a child that is reaped while a trap runs (seen on bash 5.2 when a hangup races the
# agent's end): `wait` then blocks for ever on a process that no longer exists, and the session
# would stay running, holding its slot. So the wait gets 5 s (a watchdog's USR1 cuts it
# short); past that the status counts as the signal's (143) or a failure (1), and the log
# says so.
# reap_agent PID LOG STOPPED: STOPPED is non-empty when a signal asked the session to stop.
reap_agent() {
  local pid=$1 log=$2 stopped=$3 watchdog
  # Never reset: a watchdog's USR1 that comes late only sets a flag the next call clears
  # (USR1's default action would end the supervisor).
  trap 'status_lost=1' USR1
  status_lost=
  # The hangup that ends a pane reaches its whole process group: the watchdog ignores it.
  { trap '' HUP INT TERM; sleep 5 && kill -USR1 "$$"; } 2> /dev/null &
  watchdog=$!
  wait "$pid"
  rc=$?
  kill -KILL "$watchdog" 2> /dev/null
  if [ -n "$status_lost" ]; then
    rc=1
    [ -n "$stopped" ] && rc=143
    printf 'amplihack: the agent'"'"'s exit status was lost (bash lost track of it); recorded as %s\n' "$rc" >> "$log"
  fi
}

# Locks. A session's lock orders its launch against whoever settles it; the VM's lock orders
# every decision to start an agent against the VM's capacity. Where both are held, the VM's is
# taken first.
lock_session() {
  mkdir -p -- "$base/locks" || return 1
  exec {session_lock_fd}> "$base/locks/$1" || return 1
  flock -w 60 "$session_lock_fd"
}

unlock_session() {
  exec {session_lock_fd}>&-
}

lock_vm() {
  mkdir -p -- "$base/locks" || return 1
  exec {vm_lock_fd}> "$base/locks/.vm" || return 1
  flock -w 120 "$vm_lock_fd"
}

unlock_vm() {
  exec {vm_lock_fd}>&-
}

# Hands `secret` (the API key) and `handed_url` (the session's notify URL) to a supervisor
# just started, through its FIFO: each NUL-terminated, only ever in a pipe, never in a file.
# Succeeds once the supervisor has taken them (it removes the FIFO); when it never does, the
# pipe's contents vanish as its last open end closes.
hand_key() {
  local fifo=$1 fd n=0
  exec {fd}<> "$fifo" || return 1
  printf '%s\0%s\0' "$secret" "${handed_url:-}" >&"$fd"
  while [ -p "$fifo" ] && [ "$n" -lt 300 ]; do
    sleep 0.1
    n=$((n + 1))
  done
  exec {fd}>&-
  if [ -p "$fifo" ]; then
    rm -f -- "$fifo"
    return 1
  fi
}

# Runs a command with only stdin, stdout and stderr open: a daemon it starts (the tmux server,
# and through it every supervisor and agent) must not inherit our lock files, or it would hold
# the locks for as long as it lives.
without_inherited_fds() {
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ] 2> /dev/null; then eval "exec $fd>&-"; fi
    done
    exec "$@"
  )
}

# Starts the supervisor of a prepared session (files and workspace in place) in a detached
# tmux session, and hands it `secret` and `handed_url`. On failure says why in `start_error`.
start_supervisor() {
  local id=$1 d="$base/sessions/$1" ws pane
  read_into ws "$d/workspace"
  # The FIFO exists before the supervisor does, so the supervisor knows a key is coming.
  rm -f -- "$d/secret.fifo"
  local handing=
  [ -n "$secret" ] || [ -n "${handed_url:-}" ] && handing=1
  if [ -n "$handing" ] && ! mkfifo -m 600 -- "$d/secret.fifo"; then
    start_error="cannot create $d/secret.fifo"
    return 1
  fi
  if ! pane=$(without_inherited_fds tmux new-session -d -P -F '#{pane_pid}' -s "$id" -c "${ws:-$HOME}" bash "$d/supervisor.sh" "$d" 2>&1); then
    rm -f -- "$d/secret.fifo"
    start_error="tmux new-session failed: $pane"
    return 1
  fi
  # Recorded here too (the supervisor writes the same), so the moment this returns, anyone
  # can tell a live session from a dead one.
  write_atomic "$d/supervisor.id" "$(identity_of "$pane")"
  write_atomic "$d/supervisor.pid" "$pane"
  if [ -n "$handing" ] && ! hand_key "$d/secret.fifo"; then
    tmux kill-session -t "=$id" 2> /dev/null
    start_error="the session's supervisor did not take the API key"
    return 1
  fi
}

# The phase of session $1, computed from its files and its processes: the one answer, on the
# VM, to "what is this session now" (docs/remote-layout.md, "A session's phase"). Every control
# subcommand and the supervisor decide through it; nothing is archived, drained, dequeued or
# reported finished otherwise. Sets:
#   phase         ended (exit_code recorded), running (its supervisor or its agent's group
#                 lives, identities verified, whatever marks remain), cancelled (never to start:
#                 a claim found it unlaunched, or a kill took it out of the queue), failed (its
#                 placement failed: the reason is kept), vanished (it was started, nothing of it
#                 runs, no exit code was recorded), queued, launching (its files
#                 are being written, or a launch died before placing it), absent (no
#                 directory; a session of the Python original is `running` while its tmux
#                 session exists)
#   phase_exit    the exit code, `-` when none is recorded
#   phase_kill    1 when a kill was asked (`kill_requested`)
#   phase_reason  why its placement failed (phase failed), or why its supervisor ended it
#                 (phase ended: `error`, retries spent or --max-hours; docs/unattended.md)
#   phase_alive   1 when something of it runs
# Extra facts that other parts of the VM keep in the session directory are read by
# session_facts, never by callers of this.
session_phase() {
  local id=$1 d="$base/sessions/$1" pid aid spid sid
  phase_exit=- phase_kill=0 phase_reason='' phase_alive=0
  if [ ! -d "$d" ]; then
    if tmux has-session -t "=$id" 2> /dev/null; then
      phase=running phase_alive=1
    else
      phase=absent
    fi
    return 0
  fi
  [ -e "$d/kill_requested" ] && phase_kill=1
  # exit_code is written last, once the agent's group has been ended: nothing of it runs.
  if [ -f "$d/exit_code" ]; then
    read_into phase_exit "$d/exit_code"
    phase_exit=${phase_exit:--}
    phase=ended
    # A queued session that could not start records why beside its exit code; a supervisor
    # that ended its session itself (retries spent, --max-hours: docs/unattended.md) says why.
    if [ -f "$d/launch_failed" ]; then
      read_into phase_reason "$d/launch_failed"
    elif [ -f "$d/error" ]; then
      read_into phase_reason "$d/error"
    fi
    return 0
  fi
  read_into pid "$d/agent.pid"
  read_into aid "$d/agent.id"
  read_into spid "$d/supervisor.pid"
  read_into sid "$d/supervisor.id"
  if group_alive "$pid" "$aid" "$id" || process_alive "$spid" "$sid"; then
    phase=running phase_alive=1
  elif [ -e "$d/cancelled" ]; then
    phase=cancelled
  elif [ -f "$d/launch_failed" ]; then
    phase=failed
    read_into phase_reason "$d/launch_failed"
  elif [ -e "$d/supervisor.pid" ]; then
    # Started once: a `queued` mark left beside it is stale, and it never starts again.
    phase=vanished
  elif [ -e "$d/queued" ]; then
    phase=queued
  else
    phase=launching
  fi
  return 0
}

# Whether the phase last computed is final: the session will never run (again).
phase_over() {
  case $phase in
    ended | cancelled | failed | vanished | absent) return 0 ;;
    *) return 1 ;;
  esac
}

# How many sessions of this VM run now (phase running): a session still marked `queued` counts
# once its supervisor lives (its drainer may have died between starting it and clearing the mark).
running_count() {
  local n=0 d
  for d in "$base/sessions"/*/; do
    d=${d%/}
    session_phase "${d##*/}"
    [ "$phase" = running ] && n=$((n + 1))
  done
  printf '%s' "$n"
}

# The session queued first (by the time it was queued, then by id); fails when none is.
next_queued() {
  local d t best='' best_t=
  for d in "$base/sessions"/*/queued; do
    [ -e "$d" ] || continue
    read_into t "$d"
    t=${t:-0}
    d=${d%/queued}
    if [ -z "$best" ] || [ "$t" -lt "$best_t" ] || { [ "$t" = "$best_t" ] && [[ ${d##*/} < $best ]]; }; then
      best=${d##*/} best_t=$t
    fi
  done
  [ -n "$best" ] && printf '%s' "$best"
}

# Starts queued sessions, oldest first, while the VM has a free slot ($base/capacity). Call it
# holding the VM's lock. With $1 = report (not quiet), says what it did: `drained\tID`, or
# `stuck\tID\twhy`.
drain_queue() {
  local report='' cap id d
  [ "$1" = report ] && report=1
  read_into cap "$base/capacity"
  [ -n "$cap" ] || return 0
  while [ "$(running_count)" -lt "$cap" ]; do
    id=$(next_queued) || return 0
    d="$base/sessions/$id"
    lock_session "$id" || return 0
    session_phase "$id"
    if [ "$phase" != queued ]; then
      # Started already (its drainer died before clearing the mark), cancelled, or ended.
      rm -f -- "$d/queued"
    elif [ -e "$d/needs_key" ] && [ -z "$secret" ]; then
      unlock_session
      [ -n "$report" ] && printf 'stuck\t%s\t%s\n' "$id" "no API key to start it with: run a command of this tool with ANTHROPIC_API_KEY set"
      return 0
    else
      # `queued` goes only once the supervisor is recorded: a reader without the lock must
      # never see the session between the queue and its supervisor, and take it for dead.
      # Its notify URL waited in a pipe (hold_notify_url); it goes on the way the key does.
      take_held_url "$d"
      # shellcheck disable=SC2154 # set by take_held_url (unattended.sh)
      handed_url=$held_url
      if start_supervisor "$id"; then
        rm -f -- "$d/queued"
        [ -n "$report" ] && printf 'drained\t%s\n' "$id"
      else
        # It can never start: record that, so nobody waits for it.
        printf 'amplihack: the queued session could not start: %s\n' "$start_error" >> "$d/output.log"
        write_atomic "$d/launch_failed" "the queued session could not start: $(printf '%s' "$start_error" | tr '\t\n\r' '   ')"
        write_atomic "$d/finished_at" "$(now_utc)"
        write_atomic "$d/exit_code" 1
        rm -f -- "$d/queued"
        [ -n "$report" ] && printf 'stuck\t%s\t%s\n' "$id" "$start_error"
        # It ended (failed) without a supervisor to say so: its URL was handed here.
        if [ -n "$handed_url" ]; then
          local own_url=${notify_url:-}
          notify_url=$handed_url
          send_notification session_ended "$(notification_json "$d" session_ended failed 1 \
            "the queued session could not start: $start_error" '' '')" "$d/output.log"
          notify_url=$own_url
        fi
      fi
      handed_url=
    fi
    unlock_session
  done
}

# Runs git with a time limit: a hung git must never keep a session from recording its end.
git_bounded() {
  if command -v timeout >/dev/null 2>&1; then
    timeout 60 git "$@"
  else
    git "$@"
  fi
}

# Sums `git diff --numstat` lines on stdin into `FILES INSERTIONS DELETIONS` (a binary file
# counts as a file with no lines).
numstat_totals() {
  awk -F '\t' 'NF >= 3 { f++; if ($1 != "-") i += $1; if ($2 != "-") d += $2 }
    END { printf "%d %d %d", f, i, d }'
}

# `{"files":F,"insertions":I,"deletions":D}` from `F I D`.
changes_json() {
  local f i d
  read -r f i d <<< "$1"
  printf '{"files":%d,"insertions":%d,"deletions":%d}' "${f:-0}" "${i:-0}" "${d:-0}"
}

# What workspace $1 holds against commit $2, as JSON members: head commit, commits since, the
# changes committed and those not committed (untracked files included), whether it is dirty.
# On failure: the reason on stdout, status 1. Read-only: uncommitted work is measured through a
# temporary index, never the workspace's own.
workspace_changes() {
  local ws=$1 from=$2 head commits committed uncommitted dirty=false idx real_index status
  [ -n "$ws" ] || { printf 'the workspace is unknown'; return 1; }
  command -v git >/dev/null 2>&1 || { printf 'git is not installed on the VM'; return 1; }
  head=$(git_bounded -C "$ws" rev-parse --verify -q HEAD 2>/dev/null) ||
    { printf 'the workspace is not a git repository with a commit'; return 1; }
  commits=$(git_bounded -C "$ws" rev-list --count "$from..HEAD" 2>/dev/null) ||
    { printf 'the starting commit is not in the workspace'; return 1; }
  committed=$(git_bounded -C "$ws" diff --numstat "$from" HEAD 2>/dev/null | numstat_totals)
  [ "${PIPESTATUS[0]}" = 0 ] || { printf 'git diff of the commits failed'; return 1; }
  idx=$(mktemp 2>/dev/null) || { printf 'cannot create a temp file'; return 1; }
  real_index=$(git_bounded -C "$ws" rev-parse --path-format=absolute --git-path index 2>/dev/null)
  if ! { [ -f "$real_index" ] && cp -- "$real_index" "$idx"; }; then
    GIT_INDEX_FILE=$idx git_bounded -C "$ws" read-tree HEAD >/dev/null 2>&1
  fi
  # Intent-to-add records untracked files without hashing them into the repository.
  GIT_INDEX_FILE=$idx git_bounded -C "$ws" add -A -N >/dev/null 2>&1
  uncommitted=$(GIT_INDEX_FILE=$idx git_bounded -C "$ws" diff --numstat HEAD 2>/dev/null | numstat_totals)
  status=${PIPESTATUS[0]}
  rm -f -- "$idx"
  [ "$status" = 0 ] || { printf 'git diff of the work tree failed'; return 1; }
  [ -n "$(git_bounded -C "$ws" status --porcelain 2>/dev/null | head -c 1)" ] && dirty=true
  printf '"base_commit":"%s","head_commit":"%s","commits":%d,"committed":%s,"uncommitted":%s,"dirty":%s' \
    "$from" "$head" "$commits" "$(changes_json "$committed")" "$(changes_json "$uncommitted")" "$dirty"
}

# The result of a finished session as one JSON object (docs/remote-layout.md): its start and
# finish ($3) times and duration and, when it started from a commit (record.json's
# base_commit), what its workspace $2 holds against it. Without a git context: the times alone.
session_result_json() {
  local d=$1 ws=$2 finished=$3 started='' record='' from='' duration=null s0 s1 changes
  read_into started "$d/started_at"
  [[ $started =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]] || started=
  if [ -n "$started" ] && s0=$(date -u -d "$started" +%s 2>/dev/null) &&
    s1=$(date -u -d "$finished" +%s 2>/dev/null); then
    duration=$((s1 - s0))
  fi
  if [ -n "$started" ]; then
    printf '{"started_at":"%s"' "$started"
  else
    printf '{"started_at":null'
  fi
  printf ',"finished_at":"%s","duration_seconds":%s' "$finished" "$duration"
  read_into record "$d/record.json"
  [[ $record =~ \"base_commit\":\"([0-9a-f]{7,64})\" ]] && from=${BASH_REMATCH[1]}
  if [ -n "$from" ]; then
    if changes=$(workspace_changes "$ws" "$from"); then
      printf ',%s' "$changes"
    else
      printf ',"base_commit":"%s","git_error":"%s"' "$from" "$changes"
    fi
  fi
  printf '}\n'
}

# Writes result.json into session directory $1 (workspace $2, finished at $3) atomically.
# Never fails: a broken or missing git leaves out only the git facts.
write_session_result() {
  local d=$1
  if session_result_json "$@" > "$d/result.json.part.$$" 2>/dev/null; then
    mv -f -- "$d/result.json.part.$$" "$d/result.json" 2>/dev/null
  fi
  rm -f -- "$d/result.json.part.$$"
  return 0
}

# The folder Claude Code keeps the conversations of workspace $1 in: ~/.claude/projects/ and
# the workspace's absolute path with every character other than an ASCII letter or digit
# replaced by `-`.
conversation_dir() {
  # One `-` per UTF-16 unit of each other character, as Claude Code's JavaScript counts them,
  # read from the UTF-8 bytes whatever the locale: a lead byte of a 4-byte character (outside
  # the BMP, two units) makes two, any other lead or single byte one, continuation bytes none.
  local LC_ALL=C p=$1 slug='' c n i
  for ((i = 0; i < ${#p}; i++)); do
    c=${p:i:1}
    case $c in
      [A-Za-z0-9]) slug+=$c ;;
      *)
        printf -v n '%d' "'$c"
        ((n >= 0)) || n=$((n + 256))
        if ((n >= 0xf0)); then
          slug+=--
        elif ((n < 0x80 || n >= 0xc0)); then
          slug+=-
        fi
        ;;
    esac
  done
  printf '%s/.claude/projects/%s' "$HOME" "$slug"
}

# Redaction: everything of a session written on the VM that the agent produced (its output,
# output.log; the conversation and the patch a follow-up takes) passes through sed with the
# script below, which replaces the session's secrets (the values of `redact_key` and
# `redact_url`: its API key and notify URL, held in memory) and anything shaped like an
# Anthropic key (`sk-ant-...`) by `[REDACTED]`, and passes every other byte as it is. sed reads
# its script from a pipe (`-f /dev/fd/3`): a secret is never in an argv (which `ps` shows every
# user) or an environment. Matching is by bytes (LC_ALL=C) and within a line (a secret that
# holds a line break is matched line by line); any secret is matched, however short.

# One line of a secret as a sed basic regular expression that matches it literally.
sed_literal() {
  local LC_ALL=C s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [\\/.*\[^\$]) out+="\\$c" ;;
      *) out+=$c ;;
    esac
  done
  printf '%s' "$out"
}

# The sed script of redaction (see above), on stdout.
redaction_script() {
  local LC_ALL=C rest part alternatives=''
  # Split by parameter expansion: a here-string may go through a temp file (bash < 5.1).
  for rest in "${redact_key:-}" "${redact_url:-}"; do
    while [ -n "$rest" ]; do
      part=${rest%%$'\n'*}
      if [ "$part" = "$rest" ]; then rest=; else rest=${rest#*$'\n'}; fi
      [ -n "$part" ] && alternatives+="${alternatives:+\\|}$(sed_literal "$part")"
    done
  done
  [ -n "$alternatives" ] && printf 's/\\(%s\\)/[REDACTED]/g\n' "$alternatives"
  printf 's/sk-ant-[A-Za-z0-9_-]\\{1,\\}/[REDACTED]/g\n'
}

# Replaces this (sub)shell (run it in a pipeline or a process substitution) with the
# redactor of a stream: stdin to stdout with the secrets redacted, byte for byte otherwise (a
# last line without a newline stays without one). Each line is written as soon as its newline
# arrives (stdbuf makes sed's output line-buffered; its input is read in blocks, as they come),
# so the agent's output reaches its log, `output --follow` and the silence check as it prints.
# Without a working stdbuf (not GNU coreutils, or its preload library missing), `sed -u` does
# the same, reading a byte at a time: a redactor that cannot start would lose the agent's
# output and end the agent with a broken pipe.
exec_redactor() {
  if command -v stdbuf > /dev/null 2>&1 && stdbuf -oL true 2> /dev/null; then
    LC_ALL=C exec stdbuf -oL sed -f /dev/fd/3 3< <(redaction_script)
  fi
  LC_ALL=C exec sed -u -f /dev/fd/3 3< <(redaction_script)
}

# Copies file $1 to $2 with the secrets redacted, byte for byte otherwise.
redacted_copy() {
  LC_ALL=C sed -f /dev/fd/3 < "$1" > "$2" 3< <(redaction_script)
}

# The uncommitted work of workspace $1 (edits of tracked files and untracked files, not the
# ignored ones) as a binary git patch against HEAD into file $2; no file when there is none.
# Read-only: untracked files are seen through a temporary index, never the workspace's own.
write_uncommitted_patch() {
  local ws=$1 out=$2 idx real_index
  git_bounded -C "$ws" rev-parse --verify -q HEAD >/dev/null 2>&1 || return 0
  idx=$(mktemp 2>/dev/null) || return 0
  real_index=$(git_bounded -C "$ws" rev-parse --path-format=absolute --git-path index 2>/dev/null)
  if ! { [ -f "$real_index" ] && cp -- "$real_index" "$idx"; }; then
    GIT_INDEX_FILE=$idx git_bounded -C "$ws" read-tree HEAD >/dev/null 2>&1
  fi
  GIT_INDEX_FILE=$idx git_bounded -C "$ws" add -A -N >/dev/null 2>&1
  GIT_INDEX_FILE=$idx git_bounded -C "$ws" diff --binary HEAD > "$out.raw.$$" 2>/dev/null
  rm -f -- "$idx"
  if [ -s "$out.raw.$$" ] && redacted_copy "$out.raw.$$" "$out.part.$$"; then
    mv -f -- "$out.part.$$" "$out"
  fi
  rm -f -- "$out.raw.$$" "$out.part.$$"
  return 0
}

# What a continuation of a session needs, saved into directory $2 when its agent has ended
# (workspace $1): `conversation/*.jsonl`, the agent's conversations (keys redacted), and
# `uncommitted.patch`. Taken at the end, because a follow-up later works in the same
# workspace. Never fails.
save_session_work() {
  local ws=$1 out=$2 conv f
  [ -n "$ws" ] && [ -d "$ws" ] || return 0
  write_uncommitted_patch "$ws" "$out/uncommitted.patch"
  conv=$(conversation_dir "$ws")
  [ -d "$conv" ] || return 0
  rm -rf -- "$out/conversation.part"
  mkdir -p -- "$out/conversation.part" || return 0
  for f in "$conv"/*.jsonl; do
    [ -f "$f" ] || continue
    if redacted_copy "$f" "$out/conversation.part/${f##*/}"; then
      touch -r "$f" -- "$out/conversation.part/${f##*/}"
    else
      rm -f -- "$out/conversation.part/${f##*/}"
    fi
  done
  rm -rf -- "$out/conversation"
  mv -f -- "$out/conversation.part" "$out/conversation"
  return 0
}

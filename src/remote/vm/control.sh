#!/usr/bin/env bash
# amplihack remote: the control script, with one subcommand per thing the CLI asks of a VM.
# Usage: control.sh COMMAND ARGS...  (launch, probe, records, capture, stream, watch, kill)
# The CLI sends it on the stdin of `bash -s` (through `azlin connect ... -- 'bash -s'`, or local
# bash) inside one `{ ... }` group, after lib.sh and a header that sets its arguments, so bash
# has read all of it before anything runs; whatever follows the group on stdin (a git bundle)
# is payload, read from fd 3. Every piece of data arrives as a quoted argument, byte for byte.
# It exits 0, or 3 with a message on stderr; never 255, which would look like an ssh failure.
# Answers are tab-separated lines on stdout; the formats are in docs/remote-layout.md.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
[ -n "${AMPLIHACK_LIB:-}" ] || . "${BASH_SOURCE[0]%/*}/lib.sh"
# shellcheck source=unattended.sh
[ -n "${AMPLIHACK_UNATTENDED:-}" ] || . "${BASH_SOURCE[0]%/*}/unattended.sh"

# The API key, set by the launch header only; kept in this shell, never exported or written.
secret=${AMPLIHACK_SECRET:-}
unset AMPLIHACK_SECRET
# The notify URL of the sessions a launch starts (a secret like the key, handled like it).
notify_url=${AMPLIHACK_NOTIFY:-}
unset AMPLIHACK_NOTIFY
# Redacted from what this script copies of a session (lib.sh, redaction_script): the
# conversation and the patch, when the supervisor did not live to save them.
redact_key=$secret
redact_url=$notify_url
# The local backend runs this with the user's environment: whatever it starts (the tmux server,
# supervisors, agents) must not inherit the user's notify URL.
unset AMPLIHACK_REMOTE_NOTIFY
supervisor_text=${AMPLIHACK_SUPERVISOR:-}
unset AMPLIHACK_SUPERVISOR
drain_first=${AMPLIHACK_DRAIN:-}
unset AMPLIHACK_DRAIN
# A follow-up (`continue`): the workspace it carries on in and, on a VM that lacks that
# workspace, what rebuilds it (a branch and its head, and the parts that follow the script:
# one `NAME LENGTH` line each).
continue_ws=${AMPLIHACK_CONTINUE:-}
restore_branch=${AMPLIHACK_RESTORE_BRANCH:-}
restore_head=${AMPLIHACK_RESTORE_HEAD:-}
restore_parts=${AMPLIHACK_RESTORE_PARTS:-}
unset AMPLIHACK_CONTINUE AMPLIHACK_RESTORE_BRANCH AMPLIHACK_RESTORE_HEAD AMPLIHACK_RESTORE_PARTS
restore_dir=
# The caller answers `awaiting collected` (below) with the archives it kept; and the sessions
# whose archives it brought home earlier without seeing their marks confirmed.
ack_ok=${AMPLIHACK_ACK:-}
collected_earlier=${AMPLIHACK_COLLECTED:-}
unset AMPLIHACK_ACK AMPLIHACK_COLLECTED
# The sessions whose archive frames this call sent.
sent_archives=()

fail() {
  printf 'amplihack: %s\n' "$*" >&2
  exit 3
}

# A path as the CLI records it (`/abs`, `~`, `~/rel`, or `rel` under the home) made absolute.
resolve_path() {
  local p=${1%/}
  # shellcheck disable=SC2088 # the CLI's literal `~/`, matched, not expanded
  case $p in
    '' | '~') printf '%s' "$HOME" ;;
    '~/'*) printf '%s/%s' "$HOME" "${p#\~/}" ;;
    /*) printf '%s' "$p" ;;
    *) printf '%s/%s' "$HOME" "$p" ;;
  esac
}

# One `session` line of facts: id, known (has a session directory), alive (something of it runs:
# its agent's group or its supervisor, identities verified; for a session of the Python
# original, which has no directory, its tmux session), exit code, finish and start times,
# whether a kill was asked, whether its tmux session exists, whether its launch was cancelled,
# whether this call claimed it ($2: see claim_unlaunched), whether it waits in the VM's queue,
# its phase (session_phase in lib.sh: the one judge of what a session is), why its placement
# failed (or the error its supervisor recorded), and what its supervisor says of it while it
# runs unattended (docs/unattended.md): the retry it waits for, since when its output is silent.
# Leaves the phase variables set.
session_facts() {
  local id=$1 claimed=${2:-0} d="$base/sessions/$1" known=0 fin=- st=- tmux_up=0 cancelled=0 queued=0
  local detail=- silent=-
  tmux has-session -t "=$id" 2>/dev/null && tmux_up=1
  session_phase "$id"
  if [ -d "$d" ]; then
    known=1
    [ -f "$d/finished_at" ] && read_into fin "$d/finished_at"
    [ -f "$d/started_at" ] && read_into st "$d/started_at"
    [ -e "$d/cancelled" ] && cancelled=1
    [ -f "$d/detail" ] && read_into detail "$d/detail"
    [ -f "$d/silent_since" ] && read_into silent "$d/silent_since"
  fi
  [ "$phase" = queued ] && queued=1
  printf 'session\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$id" "$known" "$phase_alive" "$phase_exit" "${fin:--}" "${st:--}" "$phase_kill" "$tmux_up" \
    "$cancelled" "$claimed" "$queued" "$phase" "$(printf '%s' "${phase_reason:--}" | tr '\t\n\r' '   ')" \
    "$(printf '%s' "${detail:--}" | tr '\t\n\r' '   ')" "${silent:--}"
}

# A note inside a frame: `note KEY VALUE`, the value on one line.
send_note() {
  printf 'note\t%s\t%s\n' "$1" "$(printf '%s' "$2" | tr '\t\n\r' '   ')"
}

# Part $1 of a frame, encoded as $2 (plain or gzip), from file $3: `part NAME ENCODING LENGTH`,
# then exactly LENGTH bytes.
send_part() {
  local size
  size=$(wc -c < "$3" 2>/dev/null) || return 1
  size=$((size))
  printf 'part\t%s\t%s\t%s\n' "$1" "$2" "$size"
  head -c "$size" -- "$3"
}

# The commits workspace $1 made after commit $2 up to commit $4 (empty: its HEAD now): a
# `commits N` note and, when N > 0, the part `commits.bundle` (a git bundle whose HEAD is that
# commit, without what $2 has), built in temp directory $3. A finished session's head is the one
# its result recorded: a follow-up may have committed in the same workspace since.
send_commits() {
  local ws n head=${4:-HEAD} repo
  ws=$(resolve_path "$1")
  if ! n=$(git_bounded -C "$ws" rev-list --count "$2..$head" 2>/dev/null); then
    send_note bundle_error "$ws is not a git workspace with commits $2 and $head"
    return
  fi
  send_note commits "$n"
  [ "$n" -gt 0 ] || return 0
  repo=$ws
  if [ "$head" != HEAD ] && [ "$(git_bounded -C "$ws" rev-parse --verify -q HEAD 2>/dev/null)" != "$head" ]; then
    # A bundle names refs, not commits: a repository of its own whose HEAD is that commit,
    # borrowing the workspace's objects, leaves the workspace untouched.
    repo="$3/head.git"
    if ! { mkdir -p -- "$repo/objects/info" "$repo/refs" &&
      git_bounded -C "$ws" rev-parse --path-format=absolute --git-path objects > "$repo/objects/info/alternates" 2>/dev/null &&
      printf '%s\n' "$head" > "$repo/HEAD"; }; then
      send_note bundle_error "cannot prepare the bundle of $head"
      return
    fi
  fi
  if git_bounded --git-dir="$(git_bounded -C "$repo" rev-parse --absolute-git-dir 2>/dev/null)" bundle create --quiet "$3/commits.bundle" HEAD "^$2" >/dev/null 2>&1; then
    send_part commits.bundle plain "$3/commits.bundle"
  else
    send_note bundle_error "git bundle create failed in $ws"
  fi
}

# The head commit a session's result recorded (result.json $1), if any.
result_head() {
  local text=''
  read_into text "$1"
  [[ $text =~ \"head_commit\":\"([0-9a-f]{7,64})\" ]] && printf '%s' "${BASH_REMATCH[1]}"
  return 0
}

# Part `uncommitted.patch` and one part `conversation/NAME` per conversation file kept in
# directory $1 (gzip-compressed through temp directory $2 when the VM has gzip).
send_session_work() {
  local src=$1 tmp=$2 f name
  [ -f "$src/uncommitted.patch" ] && send_part uncommitted.patch plain "$src/uncommitted.patch"
  [ -d "$src/conversation" ] || return 0
  # Oldest first: the order tells which conversation is the latest (`claude --continue`
  # takes the newest), and the archive keeps it. Names are checked before use.
  # shellcheck disable=SC2012,SC2045
  for name in $(ls -tr -- "$src/conversation"); do
    case $name in *.jsonl) ;; *) continue ;; esac
    case $name in *[!A-Za-z0-9._-]*) continue ;; esac
    f="$src/conversation/$name"
    [ -f "$f" ] || continue
    if command -v gzip >/dev/null 2>&1 && gzip -c -- "$f" > "$tmp/conversation.gz"; then
      send_part "conversation/$name" gzip "$tmp/conversation.gz"
    else
      send_part "conversation/$name" plain "$f"
    fi
  done
}

# The archive frame of a finished session: `archive ID`, notes and parts, `end ID`
# (docs/remote-layout.md). A reader that never sees `end` keeps nothing of it, so a cut
# connection never passes for a whole archive. $2 workspace and $3 starting commit (either may
# be empty), $4 the most bytes of the log to send (its last part).
send_archive() {
  local id=$1 ws=$2 from=$3 cap=$4 d="$base/sessions/$1" tmp size kept fin head=''
  printf 'archive\t%s\n' "$id"
  if ! tmp=$(mktemp -d 2>/dev/null); then
    send_note error "cannot create a temp directory on the VM"
    printf 'end\t%s\n' "$id"
    return
  fi
  if [ -d "$d" ]; then
    if [ -f "$d/result.json" ]; then
      send_part result.json plain "$d/result.json"
      head=$(result_head "$d/result.json")
      send_session_work "$d" "$tmp"
    else
      # The supervisor did not live to record it (killed outright, or the VM rebooted).
      read_into fin "$d/finished_at"
      [ -n "$fin" ] || fin=$(now_utc)
      session_result_json "$d" "${ws:+$(resolve_path "$ws")}" "$fin" > "$tmp/result.json" 2>/dev/null &&
        send_part result.json plain "$tmp/result.json"
      mkdir -p -- "$tmp/work" && save_session_work "${ws:+$(resolve_path "$ws")}" "$tmp/work" &&
        send_session_work "$tmp/work" "$tmp"
    fi
    [ -f "$d/record.json" ] && send_part record.json plain "$d/record.json"
    if [ -f "$d/output.log" ]; then
      size=$(($(wc -c < "$d/output.log")))
      kept=$size
      [ "$size" -gt "$cap" ] && kept=$cap
      send_note log_bytes "$size"
      send_note log_kept_from "$((size - kept))"
      if command -v gzip >/dev/null 2>&1 &&
        tail -c "$kept" -- "$d/output.log" | head -c "$kept" | gzip -c > "$tmp/output.log.gz"; then
        send_part output.log gzip "$tmp/output.log.gz"
      else
        tail -c "$kept" -- "$d/output.log" | head -c "$kept" > "$tmp/output.log"
        send_part output.log plain "$tmp/output.log"
      fi
    fi
  else
    send_note session_dir missing
  fi
  [ -n "$ws" ] && [ -n "$from" ] && send_commits "$ws" "$from" "$tmp" "$head"
  rm -rf -- "$tmp"
  printf 'end\t%s\n' "$id"
  [ -d "$d" ] && sent_archives+=("$id")
  return 0
}

# Marks session $1 `collected`: its owner has its archive at home (written and renamed into
# place there), so a prune of another machine may delete this VM without losing its results.
# Only an ended session is marked; `collected ID` says so (also for a session this VM has no
# directory of: nothing of it is here to lose).
mark_collected() {
  local id=$1 d="$base/sessions/$1"
  case $id in '' | *[!A-Za-z0-9._-]*) return 0 ;; esac
  if [ -d "$d" ]; then
    session_phase "$id"
    phase_over || return 0
    [ -e "$d/collected" ] || write_atomic "$d/collected" "$(now_utc)" || return 0
  fi
  printf 'collected\t%s\n' "$id"
}

# After the archive frames a call sent, asks its caller which it kept (`awaiting collected`)
# and marks those, as the caller answers `collected ID...` on stdin (fd 3) once their
# archives are in place at home. A caller that dies or never answers leaves them unmarked: the
# VM is kept longer, nothing is lost.
await_collected() {
  local id sent
  local -a words=()
  [ "$ack_ok" = 1 ] && [ "${#sent_archives[@]}" -gt 0 ] || return 0
  printf 'awaiting\tcollected\n'
  # One question per call, whoever asks it.
  ack_ok=
  IFS=$'\t' read -r -t 60 -u 3 -a words || return 0
  [ "${words[0]:-}" = collected ] || return 0
  for id in "${words[@]:1}"; do
    for sent in "${sent_archives[@]}"; do
      [ "$id" = "$sent" ] && mark_collected "$id" && break
    done
  done
}

# The commits a running session made so far, as a `snapshot ID` frame (what `pull` of a running
# session brings home; nothing is archived).
send_snapshot() {
  local tmp
  printf 'snapshot\t%s\n' "$1"
  if tmp=$(mktemp -d 2>/dev/null); then
    send_commits "$2" "$3" "$tmp"
    rm -rf -- "$tmp"
  else
    send_note error "cannot create a temp directory on the VM"
  fi
  printf 'end\t%s\n' "$1"
}

# A pending session whose `start` died: it was launched (its supervisor started), or it never
# will be: a launch still on its way (an azlin call the dead start left behind) finds it
# cancelled and refuses it.
claim_unlaunched() {
  local id=$1 d="$base/sessions/$1"
  lock_session "$id" || fail "cannot lock session $id"
  # Only a session nothing has placed yet: queued is launched too (the VM starts it when a
  # slot frees), and a started, failed or ended one has its own answer.
  session_phase "$id"
  case $phase in
    launching | absent) mkdir -p -- "$d" && write_atomic "$d/cancelled" "$(now_utc)" ;;
  esac
  unlock_session
}

# Starts what the VM's queue holds while it has room. The supervisors that end do this, but
# none may be left (all killed, a reboot): a call whose header sets AMPLIHACK_DRAIN (the CLI
# sets it for VMs with queued sessions, with the user's key) does it first.
drain_now() {
  lock_vm || return 0
  drain_queue report
  unlock_vm
}

# probe LOG_CAP (ID WORKSPACE BASE_COMMIT WANT)...: one `session` line per session, and by WANT:
# `archive`: the archive frame of a session found finished; `commits`: that, or the snapshot
# frame of a session still running; `claim` (a pending session whose start died): claimed
# first (see claim_unlaunched; its line says so), then as `archive`; `facts`: nothing more.
cmd_probe() {
  local cap=$1
  shift
  while [ $# -ge 4 ]; do
    if [ "$4" = claim ]; then
      claim_unlaunched "$1"
      session_facts "$1" 1
    else
      session_facts "$1"
    fi
    case $4 in
      archive | claim) phase_over && send_archive "$1" "$2" "$3" "$cap" ;;
      commits)
        if phase_over; then
          send_archive "$1" "$2" "$3" "$cap"
        elif [ -n "$2" ] && [ -n "$3" ]; then
          send_snapshot "$1" "$2" "$3"
        fi
        ;;
    esac
    shift 4
  done
}

# The facts of session $2 ($1: whether this call claimed it) and, when an archive was asked
# for ($3 $4 $5: LOG_CAP WORKSPACE BASE_COMMIT) and the session has ended, its archive frame:
# what capture and kill answer with.
facts_and_archive() {
  session_facts "$2" "$1"
  [ $# -ge 5 ] && phase_over && send_archive "$2" "$4" "$5" "$3"
  return 0
}

# records ID... [-- CLAIM_ID...]: everything this VM knows of its sessions, for `sync`. Per
# session directory a `record` line (its record.json on one line, `-` when it has none yet) and
# its `session` line; then a `session` line for each ID given that has no directory (the
# Python original's).
cmd_records() {
  local d id text claiming=0
  local -A claimed=()
  local -a asked=()
  # Ids after `--` are pending sessions whose start died: claimed first, as for probe.
  for id in "$@"; do
    if [ "$id" = -- ]; then
      claiming=1
      continue
    fi
    asked+=("$id")
    if [ "$claiming" = 1 ]; then
      claim_unlaunched "$id"
      claimed[$id]=1
    fi
  done
  for d in "$base/sessions"/*/; do
    [ -d "$d" ] || continue
    d=${d%/}
    id=${d##*/}
    # A name no session id can have would break the line format.
    case $id in *[!A-Za-z0-9._-]*) continue ;; esac
    text=-
    # JSON needs no line breaks or tabs outside its strings, and has none inside them.
    [ -s "$d/record.json" ] && text=$(tr '\t\n\r' '   ' < "$d/record.json")
    printf 'record\t%s\t%s\n' "$id" "${text:--}"
    session_facts "$id" "${claimed[$id]:-0}"
    [ -e "$d/collected" ] && printf 'collected\t%s\n' "$id"
  done
  for id in "${asked[@]}"; do
    [ -d "$base/sessions/$id" ] || session_facts "$id" "${claimed[$id]:-0}"
  done
}

# `launched ID STARTED`: STARTED is the supervisor's own `started_at`, so the state records the
# time the VM records (`-` when the agent has not started within 10 s, or never will).
report_launched() {
  local d="$base/sessions/$1" st='' spid sid n=0
  read_into spid "$d/supervisor.pid"
  read_into sid "$d/supervisor.id"
  while [ ! -f "$d/started_at" ] && [ ! -f "$d/exit_code" ] && [ "$n" -lt 100 ] &&
    process_alive "$spid" "$sid"; do
    sleep 0.1
    n=$((n + 1))
  done
  [ -f "$d/started_at" ] && read_into st "$d/started_at"
  printf 'launched\t%s\t%s\n' "$1" "${st:--}"
}

report_failed() {
  printf 'failed\t%s\t%s\n' "$1" "$(printf '%s' "$2" | tr '\t\n\r' '   ')"
}

# A placement that failed for good: recorded in the session's directory (when it has one), so
# whoever asks later, a `sync` rebuilding a lost state among them, learns it failed and why.
fail_placement() {
  local d="$base/sessions/$1"
  [ -d "$d" ] && write_atomic "$d/launch_failed" "$(printf '%s' "$2" | tr '\t\n\r' '   ')"
  report_failed "$1" "$2"
}

# Launches one session: its files and workspace under its lock, then, under the VM's lock, its
# supervisor if the VM has a free slot (after any older queued session), else a place in the
# VM's queue (when queueing is allowed), else a failure.
# $1 id, $2 prompt, $3 the session's own record (JSON), then the agent's argv before the prompt.
launch_session() {
  local id=$1 d="$base/sessions/$1"
  if ! lock_session "$id"; then
    report_failed "$id" "cannot lock the session"
    return
  fi
  prepare_session "$@"
  local prepared=$?
  unlock_session
  [ "$prepared" = 0 ] || return
  if ! lock_vm; then
    report_failed "$id" "cannot lock the VM"
    return
  fi
  drain_queue quiet
  if lock_session "$id"; then
    # Checked under the VM's lock, where sessions are placed: of two follow-ups launched at
    # once into one workspace (two machines), the second sees the first placed.
    local why
    if [ -n "$continue_ws" ] && why=$(workspace_taken_here "$id" "$(resolve_path "$continue_ws")" "$3"); then
      fail_placement "$id" "$why"
    else
      place_session "$id"
    fi
    unlock_session
  else
    report_failed "$id" "cannot lock the session"
  fi
  unlock_vm
}

# One workspace, one line of work, whichever machine asks (docs/results.md): why follow-up $1
# (record $3) may not carry on in workspace $2 on this VM, printed, when another session runs
# or waits there, or another follow-up of the same parent has already worked there. A
# machine's own state refuses these before the launch; this catches another machine's.
workspace_taken_here() {
  local id=$1 ws=$2 record=$3 parent='' d other other_ws other_record
  [[ $record =~ \"parent_session_id\":\"([A-Za-z0-9._-]+)\" ]] && parent=${BASH_REMATCH[1]}
  for d in "$base"/sessions/*; do
    other=${d##*/}
    if [ "$other" = "$id" ] || [ ! -f "$d/workspace" ]; then continue; fi
    other_ws=
    read_into other_ws "$d/workspace"
    [ "$other_ws" = "$ws" ] || continue
    session_phase "$other"
    case $phase in
      running | queued)
        printf 'its workspace is in use by session %s (%s; started from another machine? amplihack remote sync shows it): wait for it or kill it first' "$other" "$phase"
        return 0
        ;;
    esac
    if [ -z "$parent" ] || [ "$other" = "$parent" ] || [ ! -e "$d/supervisor.pid" ]; then continue; fi
    other_record=
    read_into other_record "$d/record.json"
    if [[ $other_record == *"\"parent_session_id\":\"$parent\""* ]]; then
      printf 'session %s was continued by %s already (from another machine? amplihack remote sync shows it), whose work its workspace now holds: continue %s instead' "$parent" "$other" "$other"
      return 0
    fi
  done
  return 1
}

# Under the session's lock: its files and workspace. Returns 1 when it has answered already.
prepare_session() {
  local id=$1 prompt=$2 record=$3
  shift 3
  local d="$base/sessions/$id" ws="$root/$id" out
  [ -n "$continue_ws" ] && ws=$(resolve_path "$continue_ws")
  # An earlier attempt of this same launch (a retried connect) got this far already.
  if [ -e "$d/supervisor.pid" ] || tmux has-session -t "=$id" 2>/dev/null; then
    report_launched "$id"
    return 1
  fi
  if [ -e "$d/queued" ]; then
    return 0
  fi
  if [ -e "$d/cancelled" ]; then
    report_failed "$id" "its start was taken for dead and the launch was cancelled"
    return 1
  fi
  mkdir -p -- "$d" || { report_failed "$id" "cannot create $d"; return 1; }
  # A new attempt (a retried connect): an earlier one's failure is not this one's.
  rm -f -- "$d/launch_failed"
  if ! { printf '%s' "$prompt" > "$d/prompt" &&
    printf '%s\0' "$@" > "$d/argv" &&
    printf '%s\n' "$record" > "$d/record.json" &&
    printf '%s' "$supervisor_text" > "$d/supervisor.sh" &&
    write_atomic "$d/workspace" "$ws"; }; then
    fail_placement "$id" "cannot write the session files in $d"
    return 1
  fi
  # A session queued now starts later from another process, which must then have a key.
  if [ -n "$secret" ]; then : > "$d/needs_key"; else rm -f -- "$d/needs_key"; fi
  if [ -n "$continue_ws" ]; then
    if [ -n "$restore_dir" ] && [ ! -e "$ws" ]; then
      out=$(restore_workspace "$ws" 2>&1) ||
        { report_failed "$id" "cannot rebuild the workspace $ws from the archive: $out"; return 1; }
    fi
    [ -d "$ws" ] ||
      { report_failed "$id" "the workspace $ws of the session it continues is not on this VM"; return 1; }
  elif [ -n "$bundle" ]; then
    if [ ! -e "$ws/.git" ]; then
      out=$(git clone --quiet -- "$bundle" "$ws" 2>&1) || { fail_placement "$id" "git clone failed: $out"; return 1; }
      out=$(git -C "$ws" checkout --quiet -B "amplihack/$id" 2>&1) || { fail_placement "$id" "git checkout failed: $out"; return 1; }
    fi
  else
    mkdir -p -- "$ws" || { fail_placement "$id" "cannot create the workspace $ws"; return 1; }
  fi
}

# Reads the parts that rebuild a workspace (restore_parts: `NAME LENGTH` lines) from the
# payload into a temp directory, `restore_dir`.
read_restore_parts() {
  local name len got
  restore_dir=$(mktemp -d 2>/dev/null) || fail "cannot create a temp directory on the VM"
  mkdir -p -- "$restore_dir/conversation" || fail "cannot create $restore_dir/conversation"
  while read -r name len; do
    [ -n "$name" ] || continue
    case $name in
      workspace.bundle | uncommitted.patch) ;;
      conversation/*.jsonl) case ${name#conversation/} in *[!A-Za-z0-9._-]* | .*) fail "bad part name $name" ;; esac ;;
      *) fail "bad part name $name" ;;
    esac
    # GNU head reads no further than the count it is given.
    head -c "$len" <&3 > "$restore_dir/$name" || fail "could not read $name"
    got=$(wc -c < "$restore_dir/$name")
    [ "$((got))" = "$len" ] || fail "$name came cut short ($got of $len bytes)"
    printf '%s\n' "$name" >> "$restore_dir/order"
  done <<< "$restore_parts"
}

# Rebuilds an ended session's workspace at $1 from restore_dir: a clone of its history on its
# branch at its head, its uncommitted work applied, and its conversations where Claude Code
# looks for that path, oldest first (their times keep the order: `--continue` takes the newest).
restore_workspace() {
  local ws=$1 tmp="$1.restore.$$" conv name n=0 i=0 now
  mkdir -p -- "${ws%/*}" || return 1
  if [ -f "$restore_dir/workspace.bundle" ]; then
    rm -rf -- "$tmp"
    if ! { git clone --quiet --no-checkout -- "$restore_dir/workspace.bundle" "$tmp" &&
      git -C "$tmp" checkout --quiet -B "$restore_branch" "$restore_head" &&
      git -C "$tmp" remote remove origin; }; then
      rm -rf -- "$tmp"
      return 1
    fi
    if [ -f "$restore_dir/uncommitted.patch" ]; then
      git -C "$tmp" apply --binary --whitespace=nowarn "$restore_dir/uncommitted.patch" || { rm -rf -- "$tmp"; return 1; }
    fi
    mv -- "$tmp" "$ws" || return 1
  else
    mkdir -p -- "$ws" || return 1
  fi
  conv=$(conversation_dir "$ws")
  mkdir -p -- "$conv" || return 1
  n=$(grep -c '^conversation/' "$restore_dir/order" 2>/dev/null)
  now=$(date +%s)
  while read -r name; do
    case $name in conversation/*) ;; *) continue ;; esac
    i=$((i + 1))
    cp -- "$restore_dir/$name" "$conv/${name#conversation/}" || return 1
    touch -d "@$((now - n + i))" -- "$conv/${name#conversation/}"
  done < "$restore_dir/order"
}

# Under the VM's and the session's locks: start it, queue it, or refuse it.
place_session() {
  local id=$1 d="$base/sessions/$1" running
  if [ -e "$d/supervisor.pid" ]; then
    report_launched "$id"
    return
  fi
  if [ -e "$d/cancelled" ]; then
    rm -f -- "$d/queued"
    report_failed "$id" "its start was taken for dead and the launch was cancelled"
    return
  fi
  running=$(running_count)
  if [ ! -e "$d/queued" ] && { [ -z "$capacity" ] || [ "$running" -lt "$capacity" ]; }; then
    handed_url=$notify_url
    if start_supervisor "$id"; then
      report_launched "$id"
    else
      fail_placement "$id" "$start_error"
    fi
    handed_url=
  elif [ "$queue_ok" = 1 ]; then
    if [ ! -e "$d/queued" ]; then
      write_atomic "$d/queued" "$(date +%s%N)"
      # Its notify URL waits in a pipe until it starts, and goes on with the key.
      hold_notify_url "$d" "$notify_url"
    fi
    # Its place is said once this launch has placed all its sessions (queued_answers).
    queued_here+=("$id")
  else
    fail_placement "$id" "no free slot on this VM ($running of $capacity running)"
  fi
}

# The sessions this launch queued, answered once all are placed, so each says its place in
# the VM's queue as it then is (not "1 of 1", "2 of 2" as they were added). One that started
# meanwhile (a slot freed) says so instead.
queued_here=()
queued_answers() {
  local id
  for id in "${queued_here[@]}"; do
    if [ -e "$base/sessions/$id/queued" ]; then
      printf 'queued\t%s\t%s\n' "$id" "$(queue_place "$id")"
    else
      report_launched "$id"
    fi
  done
  queued_here=()
}

# The place of a queued session in its VM's queue (1 = next), and how many are queued.
queue_place() {
  local id=$1 q t mine n=0 total=0
  read_into mine "$base/sessions/$id/queued"
  for q in "$base/sessions"/*/queued; do
    [ -e "$q" ] || continue
    total=$((total + 1))
    read_into t "$q"
    if [ "${t:-0}" -lt "${mine:-0}" ] || { [ "${t:-0}" = "${mine:-0}" ] && [[ $q < "$base/sessions/$id/queued" ]]; }; then
      n=$((n + 1))
    fi
  done
  printf '%s\t%s' "$((n + 1))" "$total"
}

# launch ROOT BUNDLE_NAME WAIT_FOR_CLOUD_INIT CAPACITY QUEUE_OK then, per session:
# ID PROMPT RECORD ARGC ARGV... The git bundle, if BUNDLE_NAME is not empty, follows the
# script on stdin. CAPACITY (empty: none) is how many agents this VM may run at once; with
# QUEUE_OK a session that finds no free slot waits in the VM's queue.
cmd_launch() {
  local root_spec=$1 bundle_name=$2 cloud_init=$3
  capacity=$4 queue_ok=$5
  shift 5
  command -v tmux > /dev/null 2>&1 || fail "tmux is not installed on this machine"
  command -v flock > /dev/null 2>&1 || fail "flock (util-linux) is not installed on this machine"
  mkdir -p -- "$base/sessions" "$base/context" || fail "cannot create $base"
  [ -n "$capacity" ] && write_atomic "$base/capacity" "$capacity"
  if [ "$cloud_init" = 1 ] && command -v cloud-init > /dev/null 2>&1; then
    cloud-init status --wait > /dev/null 2>&1
  fi
  bundle=
  if [ -n "$bundle_name" ]; then
    command -v git > /dev/null 2>&1 || fail "git is not installed on this machine"
    bundle="$base/context/$bundle_name"
    local part
    # A name of its own: concurrent launches onto this VM store the same bundle at once.
    part=$(mktemp -- "$bundle.XXXXXX.part") || fail "cannot create a temp file in $base/context"
    if ! { cat <&3 > "$part" && mv -f -- "$part" "$bundle"; }; then
      rm -f -- "$part"
      fail "could not store the git bundle"
    fi
  fi
  [ -n "$restore_parts" ] && read_restore_parts
  exec 3<&-
  root=$(resolve_path "$root_spec")
  mkdir -p -- "$root" 2> /dev/null ||
    { sudo -n mkdir -p -- "$root" && sudo -n chown "$(id -u):$(id -g)" -- "$root"; } 2> /dev/null ||
    fail "cannot create the workspace root $root (it needs sudo)"
  local id prompt record argc
  while [ $# -ge 4 ]; do
    id=$1 prompt=$2 record=$3 argc=$4
    shift 4
    launch_session "$id" "$prompt" "$record" "${@:1:$argc}"
    shift "$argc"
  done
  queued_answers
  secret=
  [ -n "$restore_dir" ] && rm -rf -- "$restore_dir"
  notify_url=
  return 0
}

# capture ID LINES [LOG_CAP WORKSPACE BASE_COMMIT]: what a session shows, its tmux pane while
# it runs, the kept log after; with the archive frame of a finished session when asked.
cmd_capture() {
  local id=$1 lines=$2 d="$base/sessions/$1"
  facts_and_archive 0 "$id" "${@:3}"
  # Before the captured text, which runs to the end of the answer.
  await_collected
  if [ "$phase" = queued ]; then
    printf 'queue\t%s\n' "$(queue_place "$id")"
    printf 'data\tnone\n'
  elif [ "$phase" = running ] && tmux has-session -t "=$id" 2>/dev/null; then
    printf 'data\tpane\n'
    tmux capture-pane -p -J -t "=$id:" -S "-$lines" 2> /dev/null
  elif [ -f "$d/output.log" ]; then
    printf 'data\tlog\n'
    tail -n "$lines" -- "$d/output.log"
  else
    printf 'data\tnone\n'
  fi
}

# Whether a session is over (its phase is final). A call that carries the user's key (a VM
# with queued sessions) also starts what the queue holds while it waits, should no supervisor
# be left to do it: a stranded queue must not outlast a `wait` or a `follow`.
session_over() {
  [ -n "$drain_first" ] && queue_waiting && drain_quietly
  session_phase "$1"
  phase_over
}

# Whether any session of this VM waits in its queue.
queue_waiting() {
  local q
  for q in "$base/sessions"/*/queued; do
    [ -e "$q" ] && return 0
  done
  return 1
}

drain_quietly() {
  lock_vm || return 0
  drain_queue quiet
  unlock_vm
}

# Streams answer in frames (docs/remote-layout.md): `S<TAB><session line>`, `D<TAB>OFFSET<TAB>LEN`
# followed by LEN bytes of the log, `B` (a heartbeat, so a silent connection can be told from a
# dead one), `E` (the end).
beat_if_due() {
  if [ $((SECONDS - last_beat)) -ge "$beat" ]; then
    printf 'B\n'
    last_beat=$SECONDS
  fi
}

# Emits the log's bytes from `offset` to its current size as one D frame (with `always`, even
# when there are none), and moves `offset`.
emit_log() {
  local size=0
  [ -f "$log" ] && size=$(stat -c %s -- "$log")
  [ "$size" -gt "$offset" ] || [ -n "${1:-}" ] || return 0
  [ "$size" -ge "$offset" ] || size=$offset
  printf 'D\t%s\t%s\n' "$offset" "$((size - offset))"
  [ "$size" -gt "$offset" ] && tail -c "+$((offset + 1))" -- "$log" | head -c "$((size - offset))"
  offset=$size
}

# stream ID OFFSET|- LINES INTERVAL BEAT: the session's log from byte OFFSET (or from its last
# LINES lines) as it grows, checked every INTERVAL seconds, until the session is over.
cmd_stream() {
  local id=$1 offset=$2 lines=$3 interval=$4 beat=$5 log="$base/sessions/$1/output.log"
  local last_beat=$SECONDS size over pane=0
  printf 'S\t'
  session_facts "$id"
  if [ ! -d "$base/sessions/$id" ] && tmux has-session -t "=$id" 2>/dev/null; then
    # A session of the Python original keeps no log: its tmux pane is followed instead.
    pane=1
    log=$(pane_log "$id" "$lines")
  fi
  if [ "$offset" = - ]; then
    offset=0
    if [ -f "$log" ]; then
      size=$(stat -c %s -- "$log")
      offset=$((size - $(head -c "$size" -- "$log" | tail -n "$lines" | wc -c)))
    fi
  fi
  emit_log always
  while :; do
    # Checked before the last read: everything the agent wrote precedes its end.
    over=0
    session_over "$id" && over=1
    emit_log
    if [ "$over" = 1 ]; then
      # The pane's last bytes reach the log through the pipe just after the pane closes.
      [ "$pane" = 1 ] && settle_pane_log
      printf 'S\t'
      session_facts "$id"
      printf 'E\n'
      [ "$pane" = 1 ] && rm -f -- "$log"
      return
    fi
    beat_if_due
    sleep "$interval"
  done
}

# pane_log ID LINES: the log a Python original's session gets while it is followed: its pane's
# last LINES lines, then everything the pane prints from then on (`tmux pipe-pane`, opened
# once, shared by every follower: `-o` opens a pipe only where none is). Prints its path.
# What the pane prints between the capture and the pipe's opening (milliseconds) is in
# neither: tmux has no capture-then-pipe in one step.
pane_log() {
  local id=$1 lines=$2 dir="$base/pane-follow" log
  log="$dir/$id.log"
  mkdir -p -- "$dir"
  if [ ! -f "$log" ]; then
    printf '%s\n' "$(tmux capture-pane -p -J -t "=$id:" -S "-$lines" 2>/dev/null)" > "$log"
  fi
  tmux pipe-pane -o -t "=$id:" "exec cat >> $(printf '%q' "$log")" 2>/dev/null
  printf '%s' "$log"
}

# Emits what the pane's pipe still writes after the pane closed: until the log stops growing.
settle_pane_log() {
  local before=-1 now=0 tries=0
  while [ "$tries" -lt 20 ]; do
    now=$(stat -c %s -- "$log" 2>/dev/null || echo 0)
    [ "$now" = "$before" ] && break
    before=$now
    emit_log
    sleep 0.1
    tries=$((tries + 1))
  done
}

# watch INTERVAL BEAT ID...: an S frame with each session's facts as it is over, heartbeats
# meanwhile, and E once all are.
cmd_watch() {
  local interval=$1 beat=$2 last_beat=$SECONDS id
  shift 2
  local -a waiting=("$@") still
  while [ "${#waiting[@]}" -gt 0 ]; do
    still=()
    for id in "${waiting[@]}"; do
      if session_over "$id"; then
        printf 'S\t'
        session_facts "$id"
      else
        still+=("$id")
      fi
    done
    waiting=("${still[@]}")
    [ "${#waiting[@]}" -gt 0 ] || break
    beat_if_due
    sleep "$interval"
  done
  printf 'E\n'
}

# kill ID FORCE GRACE_SECONDS CLAIM [LOG_CAP WORKSPACE BASE_COMMIT]: records that a kill was
# asked (so whoever sees the exit calls it killed), signals the agent's verified process group
# (TERM, then KILL after the grace; or KILL at once), and records the exit code itself when no
# supervisor is left to do it. With CLAIM 1 (a pending session whose start died), a launch still
# on its way is cancelled first. Answers with the facts, and the archive frame when asked.
cmd_kill() {
  local id=$1 force=$2 grace=$3 claim=${4:-0} d="$base/sessions/$1" signal=TERM number=15 n
  local pid aid spid sid group=0 supervisor=0 tmux_up=0
  local -a archive_args=("${@:5}")
  session_phase "$id"
  if [ "$phase" = ended ]; then
    printf 'result\talready\n'
    facts_and_archive 0 "$id" "${archive_args[@]}"
    return
  fi
  [ "$force" = 1 ] && signal=KILL number=9
  if [ "$claim" = 1 ]; then
    claim_unlaunched "$id"
    session_phase "$id"
  fi
  if [ "$phase" = queued ] && lock_vm; then
    # Queued: taken out of the queue, so it never starts. A session whose supervisor lives is
    # running whatever its marks say, and is signalled below.
    if lock_session "$id"; then
      session_phase "$id"
      if [ "$phase" = queued ]; then
        take_held_url "$d"
        rm -f -- "$d/queued"
        write_atomic "$d/kill_requested" "$signal $(now_utc)"
        write_atomic "$d/cancelled" "$(now_utc)"
        unlock_session
        unlock_vm
        # Nobody else will tell the one who asked to be told: it never started.
        notify_url=$held_url
        send_notification session_ended \
          "$(notification_json "$d" session_ended killed '' 'killed while it waited in the queue' '' '')" "$d/output.log"
        notify_url=
        printf 'result\tdequeued\n'
        session_facts "$id"
        return
      fi
      unlock_session
    fi
    unlock_vm
  fi
  read_into pid "$d/agent.pid"
  read_into aid "$d/agent.id"
  read_into spid "$d/supervisor.pid"
  read_into sid "$d/supervisor.id"
  group_alive "$pid" "$aid" "$id" && group=1
  process_alive "$spid" "$sid" && supervisor=1
  tmux has-session -t "=$id" 2> /dev/null && tmux_up=1
  if [ "$group$supervisor$tmux_up" = 000 ]; then
    # Nothing of it runs (a reboot, or killed outright): nothing to signal, nothing to mark.
    printf 'result\tgone\n'
    facts_and_archive "$claim" "$id" "${archive_args[@]}"
    return
  fi
  [ -d "$d" ] && write_atomic "$d/kill_requested" "$signal $(now_utc)"
  [ "$group" = 1 ] && end_group "$pid" "$aid" "$signal" "$((grace * 10))" report "$id"
  if [ "$supervisor" = 1 ]; then
    # No agent running (not started yet, or waiting to retry a transient failure): it stops
    # at the signal. Else it is recording the exit.
    [ "$group" = 0 ] && kill -TERM "$spid" 2> /dev/null
    n=0
    while [ ! -f "$d/exit_code" ] && process_alive "$spid" "$sid" && [ "$n" -lt 50 ]; do
      sleep 0.1
      n=$((n + 1))
    done
  fi
  tmux kill-session -t "=$id" 2> /dev/null
  # The supervisor was gone (killed outright): nobody else will record how the agent ended.
  if [ -d "$d" ] && [ ! -f "$d/exit_code" ]; then
    write_atomic "$d/finished_at" "$(now_utc)"
    write_atomic "$d/exit_code" "$((128 + number))"
  fi
  printf 'result\tkilled\n'
  facts_and_archive "$claim" "$id" "${archive_args[@]}"
}

main() {
  local command=${1:-}
  shift || true
  # Streams answer in frames only: their drains say nothing.
  if [ -n "$drain_first" ]; then
    case $command in
      stream | watch) drain_quietly ;;
      *) drain_now ;;
    esac
  fi
  if [ -n "$collected_earlier" ]; then
    case $command in
      probe | records)
        local id
        local -a earlier=()
        read -r -a earlier <<< "$collected_earlier"
        for id in "${earlier[@]}"; do mark_collected "$id"; done
        ;;
    esac
  fi
  case $command in
    launch) cmd_launch "$@" ;;
    probe) cmd_probe "$@" ;;
    records) cmd_records "$@" ;;
    capture) cmd_capture "$@" ;;
    stream) cmd_stream "$@" ;;
    watch) cmd_watch "$@" ;;
    kill) cmd_kill "$@" ;;
    *) fail "unknown control command '$command'" ;;
  esac
  # A kill frees a slot that no supervisor may be left to pass on.
  [ "$command" = kill ] && [ -n "$drain_first" ] && drain_now
  case $command in probe | kill) await_collected ;; esac
  exit 0
}

# Payload (if any) stays readable on fd 3; every command gets /dev/null as its stdin. Our own
# tmux client variable must not make tmux talk to another server.
exec 3<&0 < /dev/null
unset TMUX
umask 077
main "$@"

#!/usr/bin/env bash
# amplihack remote: the supervisor of one agent session, the process of its tmux pane.
# Usage: supervisor.sh SESSION_DIR
# It takes the API key and the notify URL from the FIFO the launch hands them through (so
# neither is ever at rest on the VM), starts the agent as its own process group with its output logged, shows the log
# in the pane, and when the agent exits ends whatever the agent left running in its group, then
# records what it produced (result.json), the finish time and the exit code. Unattended
# (docs/unattended.md): it retries transient failures with `--continue`, flags silence, caps
# the run at --max-hours and sends notifications. Contract: docs/remote-layout.md.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
[ -n "${AMPLIHACK_LIB:-}" ] || . "${BASH_SOURCE[0]%/*}/lib.sh"
# shellcheck source=unattended.sh
[ -n "${AMPLIHACK_UNATTENDED:-}" ] || . "${BASH_SOURCE[0]%/*}/unattended.sh"

d=$1
id=${d##*/}
stop=
pid=
# Set while the agent's group is this supervisor's, from its start until its status is reaped.
agent_running=
finished_at=
# The tmux session was ended under us (kill-session, kill-server, a hangup) or `kill` asked:
# end the agent's whole group rather than leave it running unsupervised. Only while that group
# is still the agent's: once reaped (waiting to retry, recording the end) its number may
# belong to another process group by now (pids are reused), which must not be signalled. The
# handler forks nothing: a hangup comes to every process of the pane's group, and a
# subshell forked here to check the group would die of the next one (exit 129) and leave the
# agent running unsupervised.
# shellcheck disable=SC2317 # invoked by the trap
on_signal() {
  stop=1
  [ -n "$agent_running" ] && [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null
}
trap on_signal HUP TERM INT

write_atomic "$d/supervisor.id" "$(identity_of $$)"
write_atomic "$d/supervisor.pid" "$$"

# Records how the session ended. exit_code is written last: once it exists, everything is.
finish() {
  write_atomic "$d/finished_at" "${finished_at:-$(now_utc)}"
  write_atomic "$d/exit_code" "$1"
}

# Records what the session produced (result.json: times, commits, changes; lib.sh) and what
# a follow-up needs (the conversation, with the key redacted, and the uncommitted work as a
# patch), before exit_code. It never fails, so nothing here can keep exit_code from being
# written. The supervisor's cwd is the workspace (tmux started it there).
record_session_result() {
  finished_at=$(now_utc)
  write_session_result "$d" "$PWD" "$finished_at"
  save_session_work "$PWD" "$d"
}

key=
key_missing=
# The notify URL (a secret, like the key): only ever in this shell's memory.
notify_url=
if [ -p "$d/secret.fifo" ]; then
  # Opened read-write, so the open never blocks; the launch writes the key, a NUL, the notify
  # URL and a NUL, waits for the FIFO to disappear, then closes its end.
  exec {key_fd}<> "$d/secret.fifo"
  IFS= read -r -t 60 -d '' key <&"$key_fd" || key_missing=1
  [ -n "$key_missing" ] || IFS= read -r -t 5 -d '' notify_url <&"$key_fd"
  rm -f -- "$d/secret.fifo"
  exec {key_fd}<&-
fi
# What the redaction of everything the agent produces replaces (lib.sh, redaction_script).
redact_key=$key
redact_url=$notify_url
log="$d/output.log"
: >> "$log"
read_unattended_settings "$d"

# The session's status as the VM tells it in a notification: killed when a kill was asked,
# else by the exit code (docs/remote-layout.md, "How status is derived").
ended_status() {
  if [ -e "$d/kill_requested" ]; then
    printf killed
  elif [ "$1" = 0 ]; then
    printf completed
  else
    printf failed
  fi
}

# Sends event $1 (session_retrying, session_silent) about the running session, with detail $2.
notify_running() {
  [ -n "$notify_url" ] || return 0
  send_notification "$1" "$(notification_json "$d" "$1" running '' '' "$2" "$PWD")" "$log"
}

# Records the end (exit code $1, error $2) and sends session_ended.
end_session() {
  rm -f -- "$d/silent_since" "$d/detail"
  if [ -n "$2" ]; then write_atomic "$d/error" "$2"; fi
  finish "$1"
  [ -n "$notify_url" ] &&
    send_notification session_ended "$(notification_json "$d" session_ended "$(ended_status "$1")" "$1" "$2" '' "$PWD")" "$log"
  return 0
}

if [ -n "$stop" ]; then
  printf 'amplihack: the session was stopped before its agent started\n' >> "$log"
  end_session 143 ""
  exit 0
fi
if [ -n "$key_missing" ]; then
  printf 'amplihack: the API key never arrived from the launch; the agent was not started\n' >> "$log"
  end_session 1 "the API key never arrived from the launch"
  exit 0
fi

export NODE_OPTIONS=--max-old-space-size=32768
# The agent never sees a notify URL (the local backend's environment is the user's).
unset AMPLIHACK_REMOTE_NOTIFY
mapfile -d '' -t argv < "$d/argv"
IFS= read -r -d '' prompt < "$d/prompt"
# A retry resumes the agent's conversation: Claude Code's `--continue` before `-p`, and a
# prompt that says to carry on.
continue_argv=("${argv[@]}")
if [[ " ${argv[*]} " == *" --continue "* ]]; then
  : # a follow-up (`continue`) resumes its conversation already
elif [ "${#argv[@]}" -gt 0 ] && [ "${argv[-1]}" = -p ]; then
  continue_argv=("${argv[@]:0:${#argv[@]}-1}" --continue -p)
else
  continue_argv+=(--continue)
fi
continue_prompt='Your previous run of this task was cut short by a transient failure (the API or the network). Continue the task from where you stopped and finish it.'
printf -v first_start '%(%s)T' -1
write_atomic "$d/started_at" "$(date -u -d "@$first_start" +%Y-%m-%dT%H:%M:%SZ)"
deadline=
[ -n "$max_seconds" ] && deadline=$((first_start + max_seconds))
capped=

# Starts the agent as its own process group, its output appended to the log through the
# redactor (lib.sh, exec_redactor): the agent may print its key (`env`, an error quoting it),
# and the log goes home and into `output`. With $1 = continue, as a retry that resumes its
# conversation.
start_agent() {
  local -a run=("${argv[@]}" "$prompt")
  local redact_fd
  [ "${1:-}" = continue ] && run=("${continue_argv[@]}" "$continue_prompt")
  attempt_offset=$(stat -c %s -- "$log" 2> /dev/null || printf 0)
  # The redactor is this shell's child, outside the agent's group, and ignores hangups and
  # TERM: ending the tmux session or the agent's group must not cut it off before it has
  # written what the agent printed last. It ends when the pipe does, once the agent's group
  # is gone (this shell keeps no end of it).
  exec {redact_fd}> >(trap '' HUP INT TERM; exec_redactor >> "$log" 2>&1)
  redactor_pid=$!
  redactor_id=$(identity_of "$redactor_pid")
  set -m
  (
    exec {redact_fd}>&-
    [ -n "$key" ] && export ANTHROPIC_API_KEY="$key"
    export AMPLIHACK_SESSION_ID="$id"
    exec "${run[@]}"
  ) < /dev/null >&"$redact_fd" 2>&1 &
  pid=$!
  agent_running=1
  set +m
  exec {redact_fd}>&-
  agent_id=$(identity_of "$pid")
  write_atomic "$d/agent.id" "$agent_id"
  write_atomic "$d/agent.pid" "$pid"
  # A signal that came between the start and `pid=$!` found no pid to forward to.
  [ -n "$stop" ] && kill -TERM -- "-$pid" 2> /dev/null
}

# Ends the agent's group for running past --max-hours (TERM, 10 s, KILL).
cap_agent() {
  capped=1
  printf 'amplihack: the session ran past --max-hours %s; ending its agent\n' "$max_hours" >> "$log"
  end_group "$pid" "$agent_id" TERM 100 "" "$id"
}

# Waits for the agent to exit (into `rc`), checking each second whether its output went
# silent (silent_since, one session_silent per silence) and whether it ran past its cap.
watch_agent() {
  local size last_size=-1 last_growth now silent='' ticker
  printf -v last_growth '%(%s)T' -1
  while process_alive "$pid" "$agent_id"; do
    printf -v now '%(%s)T' -1
    if [ -n "$deadline" ] && [ "$now" -ge "$deadline" ] && [ -z "$capped" ]; then
      cap_agent
      continue
    fi
    size=$(stat -c %s -- "$log" 2> /dev/null || printf 0)
    if [ "$size" != "$last_size" ]; then
      [ "$last_size" = -1 ] || last_growth=$now
      last_size=$size
      if [ -n "$silent" ]; then
        silent=
        rm -f -- "$d/silent_since"
      fi
    elif [ -z "$silent" ] && [ $((now - last_growth)) -ge "$silent_seconds" ]; then
      silent=1
      write_atomic "$d/silent_since" "$(date -u -d "@$last_growth" +%Y-%m-%dT%H:%M:%SZ)"
      notify_running session_silent "silent $(((now - last_growth) / 60))m (no output since $(date -u -d "@$last_growth" +%H:%M) UTC)"
    fi
    # A second's tick, cut short by the agent's exit where bash can wait for either of two
    # (5.1+); older bash sleeps the whole second.
    sleep 1 &
    ticker=$!
    if [ -n "$wait_either" ]; then
      wait -n "$pid" "$ticker" 2> /dev/null
      kill "$ticker" 2> /dev/null
    else
      wait "$ticker"
    fi
  done
  reap_agent "$pid" "$log" "$stop"
  agent_running=
  rm -f -- "$d/silent_since"
  # The agent is gone; children it left in its group (`sleep 300 &`) must not outlive the
  # session and hold a slot nobody accounts for.
  end_group "$pid" "$agent_id" TERM 100 "" "$id"
  await_redactor
}

# Waits for the redactor to write the agent's last output (its last line too, newline or
# not) and end, which it does once nothing holds the pipe: at once when the agent's group is
# gone. A process that left the group (setsid) with the agent's stdout would hold it for
# ever: after 5 s the redactor is ended (a last line without a newline is then lost), and
# the log says so.
await_redactor() {
  local n=0
  while process_alive "$redactor_pid" "$redactor_id"; do
    if [ "$n" -ge 100 ]; then
      kill -KILL "$redactor_pid" 2> /dev/null
      printf 'amplihack: a process that left the agent'"'"'s group still holds its output; no more of it is logged\n' >> "$log"
      break
    fi
    sleep 0.05
    n=$((n + 1))
  done
}

# Waits until epoch second $1 for a retry; fails when a kill or the cap came first.
wait_for_retry() {
  local until=$1 now
  while :; do
    [ -z "$stop" ] || return 1
    printf -v now '%(%s)T' -1
    if [ -n "$deadline" ] && [ "$now" -ge "$deadline" ]; then
      capped=1
      printf 'amplihack: the session ran past --max-hours %s while it waited to retry\n' "$max_hours" >> "$log"
      return 1
    fi
    [ "$now" -lt "$until" ] || return 0
    sleep 1
  done
}

wait_either=
((BASH_VERSINFO[0] > 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] >= 1))) && wait_either=1
start_agent
tail -n +1 -f --pid=$$ -- "$log" &
tail_pid=$!
attempt=0
error=
while :; do
  watch_agent
  [ -z "$capped" ] || break
  [ -z "$stop" ] || break
  [ "$rc" != 0 ] || break
  printf -v now '%(%s)T' -1
  failure=$(tail -c "+$((attempt_offset + 1))" -- "$log" | tail -n 40 | transient_failure "$now") || break
  reason=${failure#*$'\t'}
  if [ "$attempt" -ge "$retries" ]; then
    if [ "$retries" = 1 ]; then
      error="$reason (after 1 retry)"
    elif [ "$retries" != 0 ]; then
      error="$reason (after $retries retries)"
    fi
    break
  fi
  attempt=$((attempt + 1))
  until=$((now + $(retry_wait_seconds "$attempt" "${failure%%$'\t'*}" "$retry_backoff" "$now")))
  # A wait past today (a weekly plan limit) says its day too.
  when_format=%H:%M
  [ "$(date -u -d "@$until" +%F)" = "$(date -u -d "@$now" +%F)" ] || when_format='%Y-%m-%d %H:%M'
  detail="retry $attempt/$retries at $(date -u -d "@$until" +"$when_format") UTC: $reason"
  write_atomic "$d/detail" "$detail"
  printf 'amplihack: retry %s/%s at %s: %s\n' "$attempt" "$retries" "$(date -u -d "@$until" +%Y-%m-%dT%H:%M:%SZ)" "$reason" >> "$log"
  notify_running session_retrying "$detail"
  if ! wait_for_retry "$until"; then
    # Killed while it waited: no agent was running to take the signal.
    [ -n "$stop" ] && rc=143
    break
  fi
  rm -f -- "$d/detail"
  start_agent continue
done
rm -f -- "$d/detail"
if [ -n "$capped" ]; then
  rc=124
  error="ran past --max-hours $max_hours"
fi
record_session_result
end_session "$rc" "$error"
# A slot is free: start what waits in this VM's queue, handing on the key held here (the only
# copy of it on the VM, never written down).
secret=$key
if lock_vm; then
  drain_queue quiet
  unlock_vm
fi
sleep 0.5
kill "$tail_pid" 2>/dev/null
exit 0

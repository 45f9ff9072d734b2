#!/usr/bin/env bash
# amplihack remote: the supervisor of one agent session, the process of its tmux pane.
# Usage: supervisor.sh SESSION_DIR
# It takes the API key from the FIFO the launch hands it through (so the key is never at rest
# on the VM), starts the agent as its own process group with its output logged, shows the log
# in the pane, and when the agent exits ends whatever the agent left running in its group, then
# records what it produced (result.json), the finish time and the exit code. Contract:
# docs/remote-layout.md.
# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
[ -n "${AMPLIHACK_LIB:-}" ] || . "${BASH_SOURCE[0]%/*}/lib.sh"

d=$1
id=${d##*/}
stop=
pid=
finished_at=
# The tmux session was ended under us (kill-session, kill-server, a hangup) or `kill` asked:
# end the agent's whole group rather than leave it running unsupervised.
# shellcheck disable=SC2317 # invoked by the trap
on_signal() {
  stop=1
  [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null
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
  redact_key=$key
  save_session_work "$PWD" "$d"
}

key=
key_missing=
if [ -p "$d/secret.fifo" ]; then
  # Opened read-write, so the open never blocks; the launch writes the key and a NUL, waits
  # for the FIFO to disappear, then closes its end.
  exec {key_fd}<> "$d/secret.fifo"
  IFS= read -r -t 60 -d '' key <&"$key_fd" || key_missing=1
  rm -f -- "$d/secret.fifo"
  exec {key_fd}<&-
fi
: >> "$d/output.log"
if [ -n "$stop" ]; then
  printf 'amplihack: the session was stopped before its agent started\n' >> "$d/output.log"
  finish 143
  exit 0
fi
if [ -n "$key_missing" ]; then
  printf 'amplihack: the API key never arrived from the launch; the agent was not started\n' >> "$d/output.log"
  finish 1
  exit 0
fi

export NODE_OPTIONS=--max-old-space-size=32768
mapfile -d '' -t argv < "$d/argv"
IFS= read -r -d '' prompt < "$d/prompt"
write_atomic "$d/started_at" "$(now_utc)"
set -m
(
  [ -n "$key" ] && export ANTHROPIC_API_KEY="$key"
  export AMPLIHACK_SESSION_ID="$id"
  exec "${argv[@]}" "$prompt"
) < /dev/null >> "$d/output.log" 2>&1 &
pid=$!
set +m
agent_id=$(identity_of "$pid")
write_atomic "$d/agent.id" "$agent_id"
write_atomic "$d/agent.pid" "$pid"
# A signal that came between the start and `pid=$!` found no pid to forward to.
[ -n "$stop" ] && kill -TERM -- "-$pid" 2>/dev/null

tail -n +1 -f --pid=$$ -- "$d/output.log" &
tail_pid=$!
# A trapped signal cuts `wait` short: wait again until the agent has really exited.
while :; do
  wait "$pid"
  rc=$?
  process_alive "$pid" "$agent_id" || break
done
# The agent is gone; children it left in its group (`sleep 300 &`) must not outlive the
# session and hold a slot nobody accounts for.
end_group "$pid" "$agent_id" TERM 100 "" "$id"
record_session_result
finish "$rc"
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

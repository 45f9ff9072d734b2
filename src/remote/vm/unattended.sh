# shellcheck shell=bash
# amplihack remote: what lets a session run unattended (docs/unattended.md): its settings,
# the transient failures worth a retry and how long to wait for each, notifications, and the
# notify URL of a queued session kept in a pipe. Sent with lib.sh in front of the control
# script and of every session's supervisor.

# Read by the scripts that use these helpers (shellcheck sees each file alone).
# shellcheck disable=SC2034
AMPLIHACK_UNATTENDED=1

# The session's unattended settings from its record.json (`"unattended":{...}`, written by
# `start`): sets `retries`, `retry_backoff`, `silent_seconds`, `max_hours` (as given, empty:
# no cap) and `max_seconds`. A record without them (an older start) gets the defaults.
read_unattended_settings() {
  local record='' block=''
  read_into record "$1/record.json"
  retries=2 retry_backoff=60 silent_seconds=1800 max_hours='' max_seconds=''
  # A string never holds an unescaped `"`, so `"unattended":{` is only ever the key.
  [[ $record =~ \"unattended\":\{([^}]*)\} ]] && block=${BASH_REMATCH[1]}
  [[ $block =~ \"retries\":([0-9]+) ]] && retries=${BASH_REMATCH[1]}
  [[ $block =~ \"retry_backoff_s\":([0-9]+) ]] && retry_backoff=${BASH_REMATCH[1]}
  [[ $block =~ \"silent_seconds\":([0-9]+) ]] && silent_seconds=${BASH_REMATCH[1]}
  if [[ $block =~ \"max_hours\":([0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?) ]]; then
    max_hours=${BASH_REMATCH[1]}
    max_hours=${max_hours%.0}
    max_seconds=$(awk -v h="$max_hours" 'BEGIN { s = h * 3600; printf "%d", (s < 1 ? 1 : s + 0.5) }')
  fi
  [ "$silent_seconds" -ge 1 ] 2> /dev/null || silent_seconds=1800
  return 0
}

# The epoch second a clock time of a plan limit's reset means: hour $1 (1-12 with $3 am/pm,
# else 0-23), minute $2, in time zone $4 (empty: the VM's own), taken as today in that zone,
# or tomorrow when that time has passed by $5 (now, epoch seconds). With a date, month $6
# (Jan..Dec) and day $7 (`resets Sep 15 at 7pm`, `Resets Jan 12, 10:59am`): that day this
# year, or next year when it has passed.
# A time passed by less than an hour is that time (the reset came while the agent exited: the
# retry starts at once), not tomorrow's or next year's.
reset_clock_epoch() {
  local hour=$((10#$1)) minute=$((10#${2:-0})) ampm=$3 zone=$4 now=$5 month=${6:-} mday=${7:-}
  local day at year m
  case $ampm in
    am) [ "$hour" = 12 ] && hour=0 ;;
    pm) [ "$hour" -lt 12 ] && hour=$((hour + 12)) ;;
  esac
  if [ -n "$zone" ] && [ ! -e "/usr/share/zoneinfo/$zone" ]; then
    zone=
  fi
  local clock
  clock=$(printf '%02d:%02d' "$hour" "$minute")
  if [ -n "$month" ]; then
    m=Jan.Feb.Mar.Apr.May.Jun.Jul.Aug.Sep.Oct.Nov.Dec.
    m=${m%%"$month".*}
    [ "${#m}" -lt 48 ] || return 1
    m=$((${#m} / 4 + 1))
    year=$(TZ=${zone:-${TZ:-}} date -d "@$now" +%Y) || return 1
    # Last year's (a reset on Dec 31 seen just after midnight), this year's, or next year's:
    # the first not passed by an hour.
    # (Feb 29 is a day only in some of them.)
    at=
    for year in $((year - 1)) "$year" $((year + 1)); do
      day=$(TZ=${zone:-${TZ:-}} date -d "$(printf '%s-%02d-%02d' "$year" "$m" "$((10#$mday))") $clock" +%s) || continue
      at=$day
      [ "$at" -le $((now - 3600)) ] || break
    done
    [ -n "$at" ] || return 1
    printf '%s' "$at"
    return 0
  fi
  day=$(TZ=${zone:-${TZ:-}} date -d "@$now" +%F) || return 1
  at=$(TZ=${zone:-${TZ:-}} date -d "$day $clock" +%s) || return 1
  if [ "$at" -le $((now - 3600)) ]; then
    # The next day first, then its clock time: `DAY HH:MM +1 day` would read `+1` as a zone.
    day=$(date -u -d "$day 12:00 UTC + 1 day" +%F) || return 1
    at=$(TZ=${zone:-${TZ:-}} date -d "$day $clock" +%s) || return 1
  fi
  printf '%s' "$at"
}

# Whether the text on stdin (the end of a failed agent's output) shows a transient failure, the
# table of docs/unattended.md. Prints `UNTIL<TAB>REASON` and succeeds when it does: UNTIL is the
# epoch second a plan limit resets (`-` for the others, which back off), judged at $1 (now).
transient_failure() {
  local now=$1 line until=- reason='' zone
  # A bare number is not enough ("processed 429 files"): it must follow an error or status
  # word, as in `API Error: 529`, `API Error: Repeated 529 Overloaded errors`, `HTTP 429`.
  local status_code_529='(API Error|[Ee]rror|[Ss]tatus|HTTP)[^0-9]{0,24}(^|[^0-9])529([^0-9]|$)'
  local status_code_429='(API Error|[Ee]rror|[Ss]tatus|HTTP)[^0-9]{0,24}(^|[^0-9])429([^0-9]|$)'
  # Claude Code's forms: `resets 8pm (Zone)`, `reset at 9am (Zone)`, `resets 21:00`, and a
  # reset on another day: `resets Sep 15 at 7pm`, `Resets Jan 12, 10:59am (Zone)`.
  # The API's error types as words of their own (`"type":"rate_limit_error"`), not inside a
  # name the agent prints (`test_rate_limit_error_is_retried FAILED`).
  local word_before='(^|[^A-Za-z0-9_])' word_after='([^A-Za-z0-9_]|$)'
  local months='Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec'
  local limit_clock="(limit|Limit).*[Rr]esets?( at)? (($months) ([0-9]{1,2}),?( at)? )?([0-9]{1,2})(:([0-9]{2}))? ?([ap]m)?( \\(([A-Za-z0-9_+/-]+)\\))?"
  # Each line's first 4 KiB: the failures are said at the start of short lines, and the
  # patterns above cost time growing with the square of a line's length (a 1 MB line of JSON
  # took a minute, a longer one far more, while the session held its slot).
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%$'\r'}
    if [[ $line =~ Claude\ AI\ usage\ limit\ reached\|([0-9]{9,11}) ]]; then
      reason='usage limit reached' until=${BASH_REMATCH[1]}
    elif [[ $line =~ (session|weekly|usage|Opus|Sonnet|your|-hour)\ limit ]] && [[ $line =~ $limit_clock ]]; then
      zone=${BASH_REMATCH[12]}
      if until=$(reset_clock_epoch "${BASH_REMATCH[7]}" "${BASH_REMATCH[9]}" "${BASH_REMATCH[10]}" "$zone" "$now" \
        "${BASH_REMATCH[4]}" "${BASH_REMATCH[5]}"); then
        reason="plan limit, resets ${BASH_REMATCH[4]:+${BASH_REMATCH[4]} ${BASH_REMATCH[5]} }${BASH_REMATCH[7]}${BASH_REMATCH[8]}${BASH_REMATCH[10]}${zone:+ $zone}"
      else
        until=- reason='plan limit'
      fi
    elif [[ $line =~ $word_before\"?overloaded_error\"?$word_after ]] || [[ $line =~ $status_code_529 ]] ||
      [[ $line =~ API\ Error:.*[Oo]verloaded ]]; then
      reason='API overloaded' until=-
    elif [[ $line =~ $word_before\"?rate_limit_error\"?$word_after ]] || [[ $line =~ $status_code_429 ]] ||
      [[ $line =~ API\ Error:.*[Rr]ate\ limit ]]; then
      # Claude Code also says it in words: `API Error: Rate limit reached`.
      reason='rate limited' until=-
    elif [[ $line =~ API\ Error:\ (5[0-9][0-9]) ]]; then
      reason="API server error ${BASH_REMATCH[1]}" until=-
    elif [[ $line =~ (ECONNRESET|ETIMEDOUT|fetch\ failed|socket\ hang\ up) ]]; then
      reason="network error (${BASH_REMATCH[1]})" until=-
    elif [[ $line =~ API\ Error:\ (Connection\ error|Request\ timed\ out) ]]; then
      reason="network error (${BASH_REMATCH[1]})" until=-
    fi
  done < <(LC_ALL=C cut -b 1-4096)
  [ -n "$reason" ] || return 1
  # No plan limit resets more than a week ahead: a reset further off is not believed (a
  # garbled or quoted line would park the session, holding its slot, for months or years);
  # it backs off as the other failures do.
  if [ "$until" != - ] && [ "$until" -gt $((now + 8 * 86400)) ]; then
    until=-
  fi
  printf '%s\t%s' "$until" "$reason"
}

# How long retry $1 (1, 2, ...) waits: until a plan limit's reset plus a minute ($2, epoch
# seconds, or `-`), else base $3 doubled per retry before it; judged at $4 (now).
retry_wait_seconds() {
  local n=$1 until=$2 base=$3 now=$4 w
  if [ "$until" != - ]; then
    w=$((until + 60 - now))
    [ "$w" -ge 1 ] || w=1
  else
    w=$((base << (n - 1)))
  fi
  printf '%s' "$w"
}

# One JSON string: quotes, backslashes and control characters escaped.
json_string() {
  local s=$1 i c
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  for ((i = 1; i < 32; i++)); do
    printf -v c '%b' "\\x$(printf %02x "$i")"
    [[ $s == *"$c"* ]] && s=${s//"$c"/$(printf '\\u%04x' "$i")}
  done
  printf '"%s"' "$s"
}

# `42s`, `42m`, `3h 5m`: a duration of $1 seconds as a person says it.
human_duration() {
  local s=$1
  if [ "$s" -lt 60 ]; then
    printf '%ss' "$s"
  elif [ "$s" -lt 3600 ]; then
    printf '%sm' "$((s / 60))"
  else
    printf '%sh %sm' "$((s / 3600))" "$((s % 3600 / 60))"
  fi
}

# The notification of event $2 about the session in directory $1 as one JSON object
# (docs/unattended.md): status $3, exit code $4 (or empty), the recorded reason $5, the detail
# $6 (events other than session_ended), the workspace $7.
notification_json() {
  local d=$1 event=$2 status=$3 rc=$4 reason=$5 detail=$6 ws=$7
  local id=${d##*/} record='' vm='' prompt='' short started='' fin='' s0 s1 duration=null
  local result commits=null files=null text line LC_ALL=C.UTF-8
  read_into record "$d/record.json"
  [[ $record =~ \"vm_name\":\"([^\"]*)\" ]] && vm=${BASH_REMATCH[1]}
  { IFS= read -r -d '' prompt < "$d/prompt"; } 2> /dev/null
  # Characters, not bytes (LC_ALL above): a cut never splits one.
  prompt=${prompt:0:200}
  read_into started "$d/started_at"
  read_into fin "$d/finished_at"
  [ -n "$fin" ] && [ "$event" = session_ended ] || fin=$(now_utc)
  if [ -n "$started" ] && s0=$(date -u -d "$started" +%s 2> /dev/null) &&
    s1=$(date -u -d "$fin" +%s 2> /dev/null); then
    duration=$((s1 - s0))
  fi
  if [ "$event" = session_ended ] && [ -f "$d/result.json" ]; then
    read_into result "$d/result.json"
  else
    result=$(session_result_json "$d" "$ws" "$fin" 2> /dev/null)
  fi
  [[ $result =~ \"commits\":([0-9]+) ]] && commits=${BASH_REMATCH[1]}
  [[ $result =~ \"committed\":\{\"files\":([0-9]+) ]] && files=${BASH_REMATCH[1]}
  line=${prompt%%$'\n'*}
  short=$line
  [ "${#short}" -gt 60 ] && short="${short:0:57}..."
  case $event in
    session_ended)
      text="$id $status"
      [ "$status" = failed ] && [ -n "$rc" ] && text+=" (exit $rc)"
      [ "$duration" != null ] && text+=" in $(human_duration "$duration")"
      text+=": ${commits/null/0} commits, ${files/null/0} files"
      [ -n "$reason" ] && text+="; $reason"
      ;;
    *) text="$id $status: $detail" ;;
  esac
  text+=": \"$short\""
  printf '{"event":%s,"session_id":%s,"status":%s,"exit_code":%s,"vm_name":%s,"prompt":%s,' \
    "$(json_string "$event")" "$(json_string "$id")" "$(json_string "$status")" "${rc:-null}" \
    "$(json_string "$vm")" "$(json_string "$prompt")"
  printf '"duration_s":%s,"commits":%s,"files_changed":%s,"reason":%s,' \
    "$duration" "$commits" "$files" "$([ -n "$reason" ] && json_string "$reason" || printf null)"
  [ "$event" = session_ended ] || printf '"detail":%s,' "$(json_string "$detail")"
  printf '"text":%s,"content":%s}\n' "$(json_string "$text")" "$(json_string "$text")"
}

# Closes every fd above 2 of the current (sub)shell: a background process of ours must not
# hold a lock (the VM's, a session's) or a pipe of the call that started it.
close_inherited_fds() {
  local fd
  for fd in /proc/"$BASHPID"/fd/*; do
    fd=${fd##*/}
    if [ "$fd" -gt 2 ] 2> /dev/null; then eval "exec $fd>&-"; fi
  done
}

# A value for a curl config file: inside double quotes, `\` and `"` escaped.
curl_config_value() {
  local v=${1//\\/\\\\}
  printf '"%s"' "${v//\"/\\\"}"
}

# Posts JSON $2 to URL $1 once: curl when the VM has it (the URL goes in a config read from
# stdin, `-K -`, never in an argv), else node (the URL on its stdin). Succeeds on a 2xx answer;
# on failure prints why (never the URL).
post_once() {
  local url=$1 body=$2 code rc
  if command -v curl > /dev/null 2>&1; then
    code=$(printf 'url = %s\n' "$(curl_config_value "$url")" |
      curl -K - -s -o /dev/null -w '%{http_code}' --max-time 10 --proto =http,https \
        -X POST -H 'Content-Type: application/json' --data-binary @/dev/fd/3 3<<< "$body" 2> /dev/null)
    rc=$?
    [[ $code == 2[0-9][0-9] ]] && return 0
    if [ "$rc" = 0 ] || [ "$rc" = 22 ]; then printf 'HTTP %s' "$code"; else printf 'curl exit %s' "$rc"; fi
    return 1
  fi
  if command -v node > /dev/null 2>&1; then
    code=$(printf '%s' "$url" | node -e '
      const fs = require("fs");
      const url = new URL(fs.readFileSync(0, "utf8"));
      const body = fs.readFileSync("/dev/fd/3");
      const lib = require(url.protocol === "https:" ? "https" : "http");
      const req = lib.request(url, { method: "POST", timeout: 10000, headers: {
        "Content-Type": "application/json", "Content-Length": body.length } }, (res) => {
        res.resume();
        process.stdout.write(String(res.statusCode));
        process.exit(res.statusCode >= 200 && res.statusCode < 300 ? 0 : 1);
      });
      req.on("timeout", () => { process.stdout.write("timeout"); req.destroy(); process.exit(1); });
      req.on("error", (e) => { process.stdout.write(e.code || "error"); process.exit(1); });
      req.end(body);' 3<<< "$body" 2> /dev/null) && return 0
    printf 'node: %s' "${code:-failed}"
    return 1
  fi
  printf 'neither curl nor node is installed on the VM'
  return 1
}

# Sends notification JSON $2 of event $1 to `notify_url` (held in memory only) in the
# background: up to 3 tries, 2 then 4 s apart; a failure is one line in log $3 and changes
# nothing else. The sender ignores hangups, so ending the tmux session does not cut it short.
send_notification() {
  local event=$1 body=$2 log=$3
  [ -n "${notify_url:-}" ] || return 0
  (
    trap '' HUP INT TERM
    close_inherited_fds
    why=
    for try in 1 2 3; do
      why=$(post_once "$notify_url" "$body") && exit 0
      [ "$try" = 3 ] || sleep $((try * 2))
    done
    printf 'amplihack: the %s notification was not delivered after 3 tries: %s\n' "$event" "$why" >> "$log"
  ) < /dev/null > /dev/null 2>&1 &
  disown $! 2> /dev/null
  return 0
}

# Keeps the notify URL of session directory $1, queued, in a pipe until it starts: the only
# place a URL can wait on the VM without being written down. A detached holder keeps
# `notify.fifo` open (so what is in it stays) while the session is queued; whoever starts or
# dequeues the session takes the URL out (take_held_url) and removes the FIFO, and the holder
# then exits. It gives up after a week in the queue: nothing waits for ever on a VM.
hold_notify_url() {
  local d=$1 url=$2 fd n=0
  [ -n "$url" ] || return 0
  rm -f -- "$d/notify.fifo" "$d/notify.held"
  mkfifo -m 600 -- "$d/notify.fifo" || return 1
  exec {fd}<> "$d/notify.fifo" || return 1
  printf '%s\0' "$url" >&"$fd"
  (
    close_inherited_fds
    # shellcheck disable=SC2016 # the holder's own script, expanded there
    exec setsid bash -c '
      exec 3<> "$1" || exit 0
      : > "$3"
      while [ -p "$1" ] && [ -e "$2" ] && [ "$SECONDS" -lt 604800 ]; do sleep 2; done' \
      _ "$d/notify.fifo" "$d/queued" "$d/notify.held"
  ) < /dev/null > /dev/null 2>&1 &
  while [ ! -e "$d/notify.held" ] && [ "$n" -lt 50 ]; do
    sleep 0.1
    n=$((n + 1))
  done
  exec {fd}>&-
  rm -f -- "$d/notify.held"
}

# Takes the URL a queued session's holder keeps (hold_notify_url) into `held_url` (empty when
# there is none) and removes the FIFO.
take_held_url() {
  local d=$1 fd
  held_url=
  [ -p "$d/notify.fifo" ] || return 0
  if exec {fd}<> "$d/notify.fifo"; then
    IFS= read -r -t 1 -d '' held_url <&"$fd"
    exec {fd}<&-
  fi
  rm -f -- "$d/notify.fifo"
}

//! Running unattended (docs/unattended.md): the settings a session is started with (notify,
//! retries, silence, the --max-hours cap), resolved from flags and the environment, recorded
//! with the session and carried to its VM in its record; and how a running session's
//! supervisor facts (a retry it waits for, silence) read to a person. Pure: no I/O; the
//! environment comes in as a lookup function and the time as `now`.
//!
//! The notify URL is a secret (a Slack webhook URL is a credential): it is resolved here, but
//! never recorded. It travels only in the launch's stdin, to the supervisor's FIFO, like the
//! API key; the record says only `notify: true`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_SILENT_MINUTES: u32 = 30;
pub const DEFAULT_RETRY_BACKOFF_S: u64 = 60;
/// The most retries a session may ask for: each one re-runs a whole agent.
pub const MAX_RETRIES: u32 = 100;

pub const ENV_NOTIFY: &str = "AMPLIHACK_REMOTE_NOTIFY";
pub const ENV_RETRIES: &str = "AMPLIHACK_REMOTE_RETRIES";
pub const ENV_SILENT_MINUTES: &str = "AMPLIHACK_REMOTE_SILENT_MINUTES";
pub const ENV_MAX_HOURS: &str = "AMPLIHACK_REMOTE_MAX_HOURS";
pub const ENV_RETRY_BACKOFF: &str = "AMPLIHACK_REMOTE_RETRY_BACKOFF";
/// For tests: silence measured in seconds rather than whole minutes.
pub const ENV_SILENT_SECONDS: &str = "AMPLIHACK_REMOTE_SILENT_SECONDS";

/// A session's unattended settings as its record keeps them (state file and the VM's
/// record.json, where the supervisor reads them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unattended {
    /// Notifications were asked for (the URL itself is never recorded).
    #[serde(default)]
    pub notify: bool,
    pub retries: u32,
    pub silent_minutes: u32,
    /// Silence in seconds, what the supervisor uses: `silent_minutes` x 60 unless a test set
    /// AMPLIHACK_REMOTE_SILENT_SECONDS.
    pub silent_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hours: Option<f64>,
    /// The first retry's wait (then doubled) for failures without a reset time.
    pub retry_backoff_s: u64,
}

impl Default for Unattended {
    fn default() -> Self {
        Unattended {
            notify: false,
            retries: DEFAULT_RETRIES,
            silent_minutes: DEFAULT_SILENT_MINUTES,
            silent_seconds: u64::from(DEFAULT_SILENT_MINUTES) * 60,
            max_hours: None,
            retry_backoff_s: DEFAULT_RETRY_BACKOFF_S,
        }
    }
}

/// What the user gave on the command line (clap's `UnattendedArgs`), before the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Given {
    pub notify: Option<String>,
    pub retries: Option<u32>,
    pub silent_minutes: Option<u32>,
    pub max_hours: Option<f64>,
}

/// The settings and the notify URL (secret: never recorded) of sessions started now: each
/// flag, else its environment variable, else the default. A malformed value is an invalid
/// argument (exit 2) naming the flag or variable and what it takes.
pub fn resolve(
    given: &Given,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Unattended, Option<String>)> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let url = match &given.notify {
        Some(u) => Some(check_url("--notify", u)?),
        None => env(ENV_NOTIFY)
            .map(|u| check_url(ENV_NOTIFY, &u))
            .transpose()?,
    };
    let retries = match given.retries {
        Some(n) => n,
        None => match env(ENV_RETRIES) {
            None => DEFAULT_RETRIES,
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_RETRIES)
                .ok_or_else(|| bad(ENV_RETRIES, &v, "a whole number from 0 to 100"))?,
        },
    };
    let silent_minutes = match given.silent_minutes {
        Some(n) => n,
        None => match env(ENV_SILENT_MINUTES) {
            None => DEFAULT_SILENT_MINUTES,
            Some(v) => parse_silent_minutes(&v).map_err(|e| bad(ENV_SILENT_MINUTES, &v, &e))?,
        },
    };
    let max_hours = match given.max_hours {
        Some(h) => Some(h),
        None => env(ENV_MAX_HOURS)
            .map(|v| parse_max_hours(&v).map_err(|e| bad(ENV_MAX_HOURS, &v, &e)))
            .transpose()?,
    };
    let retry_backoff_s = match env(ENV_RETRY_BACKOFF) {
        None => DEFAULT_RETRY_BACKOFF_S,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=86_400).contains(n))
            .ok_or_else(|| {
                bad(
                    ENV_RETRY_BACKOFF,
                    &v,
                    "a whole number of seconds from 1 to 86400",
                )
            })?,
    };
    let silent_seconds = match env(ENV_SILENT_SECONDS) {
        None => u64::from(silent_minutes) * 60,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad(ENV_SILENT_SECONDS, &v, "a whole number of seconds above 0"))?,
    };
    Ok((
        Unattended {
            notify: url.is_some(),
            retries,
            silent_minutes,
            silent_seconds,
            max_hours,
            retry_backoff_s,
        },
        url,
    ))
}

fn bad(name: &str, value: &str, expected: &str) -> Error {
    Error::InvalidArgs(format!("invalid {name}={value:?}: expected {expected}"))
}

/// A notify URL: http(s), one line, no spaces. The message never repeats the URL (a secret).
pub fn check_url(what: &str, url: &str) -> Result<String> {
    let url = url.trim();
    // Schemes are case-insensitive (RFC 3986): HTTPS:// is https://.
    let scheme = url.split("://").next().unwrap_or_default();
    let scheme_ok = url.contains("://")
        && (scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http"));
    let host_ok = url
        .split("://")
        .nth(1)
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if !scheme_ok || !host_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::InvalidArgs(format!(
            "{what}: expected an http:// or https:// URL without spaces (a webhook URL such as https://hooks.slack.com/services/...)"
        )));
    }
    Ok(url.to_string())
}

/// `--silent-minutes`: whole minutes, at least 1.
pub fn parse_silent_minutes(s: &str) -> std::result::Result<u32, String> {
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=525_600).contains(n))
        .ok_or_else(|| "a whole number of minutes from 1 to 525600 (a year)".to_string())
}

/// `--max-hours`: a decimal above 0 (at most a year of hours).
pub fn parse_max_hours(s: &str) -> std::result::Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|h| h.is_finite() && *h > 0.0 && *h <= 8760.0)
        .ok_or_else(|| "a number of hours above 0, at most 8760 (e.g. 0.5 or 6)".to_string())
}

/// What a running session's supervisor says of it, for `detail` and the STATUS column:
/// silent since `silent_since` (whole minutes, as of `now`), else the retry it waits for.
pub fn detail(
    detail: Option<&str>,
    silent_since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<String> {
    if let Some(since) = silent_since {
        let minutes = (now - since).num_minutes().max(0);
        return Some(format!("silent {minutes}m"));
    }
    detail.map(str::to_string)
}

/// The short form for a status column: the detail before its reason (`retry 1/2 at 14:05
/// UTC` of `retry 1/2 at 14:05 UTC: API overloaded`).
pub fn short_detail(detail: &str) -> &str {
    detail.split(": ").next().unwrap_or(detail)
}

/// The one line `wait --notify` shows on the desktop: how the sessions it waited for ended
/// (`3 sessions ended: 2 completed, 1 failed`), and how many it stopped waiting for.
pub fn wait_summary(ended: &[&str], still_waiting: usize) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for status in ended {
        match counts.iter_mut().find(|(s, _)| s == status) {
            Some((_, n)) => *n += 1,
            None => counts.push((status, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let n = ended.len();
    let mut line = format!("{n} session{} ended", if n == 1 { "" } else { "s" });
    if !parts.is_empty() {
        line.push_str(": ");
        line.push_str(&parts.join(", "));
    }
    if still_waiting > 0 {
        line.push_str(&format!("; {still_waiting} still running (wait gave up)"));
    }
    line
}

/// The desktop notification command for `summary` on this OS, when its program exists
/// (`have`): notify-send on Linux, osascript on macOS; None elsewhere.
pub fn desktop_command(
    os: &str,
    summary: &str,
    have: impl Fn(&str) -> bool,
) -> Option<(String, Vec<String>)> {
    const TITLE: &str = "amplihack remote";
    match os {
        "macos" if have("osascript") => {
            let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
            Some((
                "osascript".into(),
                vec![
                    "-e".into(),
                    format!(
                        "display notification {} with title {}",
                        quoted(summary),
                        quoted(TITLE)
                    ),
                ],
            ))
        }
        "macos" => None,
        _ if have("notify-send") => Some((
            "notify-send".into(),
            vec!["--app-name=amplihack".into(), TITLE.into(), summary.into()],
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_url_schemes_are_case_insensitive_and_others_refused() {
        for ok in [
            "HTTP://127.0.0.1:9/x",
            "Https://hooks.example/y",
            "https://h/z",
        ] {
            assert!(check_url("--notify", ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://h/x",
            "httpx://h",
            "http:/h",
            "http://",
            "http:///x",
            "h http://x",
        ] {
            assert!(check_url("--notify", bad).is_err(), "{bad}");
        }
    }
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_then_environment_then_flags() {
        let (u, url) = resolve(&Given::default(), env_of(&[])).unwrap();
        assert_eq!(u, Unattended::default());
        assert_eq!(url, None);
        let env = env_of(&[
            (ENV_NOTIFY, "https://hooks.example/x"),
            (ENV_RETRIES, "0"),
            (ENV_SILENT_MINUTES, "5"),
            (ENV_MAX_HOURS, "1.5"),
            (ENV_RETRY_BACKOFF, "2"),
        ]);
        let (u, url) = resolve(&Given::default(), &env).unwrap();
        assert_eq!(url.as_deref(), Some("https://hooks.example/x"));
        assert!(u.notify);
        assert_eq!((u.retries, u.silent_minutes, u.silent_seconds), (0, 5, 300));
        assert_eq!((u.max_hours, u.retry_backoff_s), (Some(1.5), 2));
        let given = Given {
            notify: Some("http://127.0.0.1:9/n".into()),
            retries: Some(3),
            silent_minutes: Some(7),
            max_hours: Some(0.25),
        };
        let (u, url) = resolve(&given, &env).unwrap();
        assert_eq!(url.as_deref(), Some("http://127.0.0.1:9/n"));
        assert_eq!(
            (u.retries, u.silent_minutes, u.max_hours),
            (3, 7, Some(0.25))
        );
        let (u, _) = resolve(&Given::default(), env_of(&[(ENV_SILENT_SECONDS, "3")])).unwrap();
        assert_eq!((u.silent_minutes, u.silent_seconds), (30, 3));
    }

    #[test]
    fn bad_values_name_the_setting_and_never_echo_a_url() {
        for (name, value) in [
            (ENV_RETRIES, "-1"),
            (ENV_RETRIES, "two"),
            (ENV_SILENT_MINUTES, "0"),
            (ENV_SILENT_MINUTES, "1.5"),
            (ENV_MAX_HOURS, "0"),
            (ENV_MAX_HOURS, "nan"),
            (ENV_RETRY_BACKOFF, "0"),
        ] {
            let e = resolve(&Given::default(), env_of(&[(name, value)])).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
        for url in [
            "ftp://x/y",
            "hooks.slack.com/x",
            "https://",
            "https://a b/c",
        ] {
            let e = resolve(&Given::default(), env_of(&[(ENV_NOTIFY, url)])).unwrap_err();
            assert!(e.to_string().contains(ENV_NOTIFY), "{e}");
        }
        for url in ["ftp://x/SECRETPART", "https://a b/SECRETPART", "SECRETPART"] {
            let given = Given {
                notify: Some(url.into()),
                ..Given::default()
            };
            let e = resolve(&given, env_of(&[])).unwrap_err();
            assert!(e.to_string().contains("--notify"), "{e}");
            assert!(!e.to_string().contains("SECRETPART"), "{e}");
        }
        assert!(parse_max_hours("1e400").is_err());
        assert_eq!(parse_max_hours(" 0.001 "), Ok(0.001));
    }

    #[test]
    fn silence_wins_over_a_retry_detail_and_counts_whole_minutes() {
        let now: DateTime<Utc> = "2026-01-01T12:42:30Z".parse().unwrap();
        let since: DateTime<Utc> = "2026-01-01T12:00:00Z".parse().unwrap();
        assert_eq!(
            detail(Some("retry 1/2"), Some(since), now).as_deref(),
            Some("silent 42m")
        );
        assert_eq!(
            detail(Some("retry 1/2 at 14:05 UTC: API overloaded"), None, now).as_deref(),
            Some("retry 1/2 at 14:05 UTC: API overloaded")
        );
        assert_eq!(detail(None, None, now), None);
        assert_eq!(
            short_detail("retry 1/2 at 14:05 UTC: API overloaded"),
            "retry 1/2 at 14:05 UTC"
        );
        assert_eq!(short_detail("silent 42m"), "silent 42m");
    }

    #[test]
    fn wait_summaries_and_desktop_commands() {
        assert_eq!(
            wait_summary(&["completed", "failed", "completed"], 0),
            "3 sessions ended: 2 completed, 1 failed"
        );
        assert_eq!(
            wait_summary(&["killed"], 2),
            "1 session ended: 1 killed; 2 still running (wait gave up)"
        );
        let (p, a) = desktop_command("linux", "1 session ended", |p| p == "notify-send").unwrap();
        assert_eq!(
            (p.as_str(), a.last().unwrap().as_str()),
            ("notify-send", "1 session ended")
        );
        let (p, a) = desktop_command("macos", "say \"hi\"", |p| p == "osascript").unwrap();
        assert_eq!(p, "osascript");
        assert_eq!(
            a[1],
            r#"display notification "say \"hi\"" with title "amplihack remote""#
        );
        assert_eq!(desktop_command("linux", "x", |_| false), None);
        assert_eq!(desktop_command("macos", "x", |p| p == "notify-send"), None);
    }

    #[test]
    fn the_record_form_is_what_the_supervisor_reads() {
        let u = Unattended {
            max_hours: Some(2.0),
            ..Unattended::default()
        };
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(
            json,
            r#"{"notify":false,"retries":2,"silent_minutes":30,"silent_seconds":1800,"max_hours":2.0,"retry_backoff_s":60}"#
        );
    }
}

//! Flags shared by the commands: the timeout preset and its overrides, base URLs, and keys.

use clap::{Args, ValueEnum};
use firebreak::{client::ApiKey, timeout::TimeoutConfig, timeout::Workload};
use std::time::Duration;

/// A workload preset on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PresetArg {
    Interactive,
    Agentic,
    LongContext,
    BatchSubmit,
}

impl PresetArg {
    pub(crate) fn workload(self) -> Workload {
        match self {
            PresetArg::Interactive => Workload::Interactive,
            PresetArg::Agentic => Workload::Agentic,
            PresetArg::LongContext => Workload::LongContext,
            PresetArg::BatchSubmit => Workload::BatchSubmit,
        }
    }
}

fn fmt_d(d: Option<Duration>) -> String {
    match d.map(|d| d.as_secs()) {
        None => "off".into(),
        Some(s) if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        Some(s) => format!("{s} s"),
    }
}

/// The presets' timeouts, read from the library (so the help never drifts from it).
pub(crate) fn preset_help() -> String {
    let mut s = String::from(
        "Timeout preset, from Fireworks' workload table:\n\n  preset        first byte  first event  idle    attempt  deadline\n",
    );
    for p in PresetArg::value_variants() {
        let t = TimeoutConfig::preset(p.workload());
        let name = p
            .to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        s.push_str(&format!(
            "  {name:<13} {:<11} {:<12} {:<7} {:<8} {}\n",
            fmt_d(t.headers),
            fmt_d(t.first_event),
            fmt_d(t.idle),
            fmt_d(t.attempt),
            fmt_d(t.deadline)
        ));
    }
    s.push_str("\nAll presets: connect 10 s, write 30 s (long-context 2 min).");
    s
}

/// The preset and the flags that override its timeouts.
#[derive(Debug, Clone, Args)]
pub(crate) struct TimeoutArgs {
    /// Timeout preset (Fireworks' workloads).
    #[arg(long, value_enum, default_value_t = PresetArg::Interactive, long_help = preset_help())]
    pub(crate) preset: PresetArg,
    /// Overall deadline per call, across retries, in seconds.
    #[arg(long)]
    deadline: Option<f64>,
    /// Longest single attempt, in seconds.
    #[arg(long)]
    attempt_timeout: Option<f64>,
    /// Time to the first byte of the response (for a non-streaming call, the whole generation),
    /// in seconds.
    #[arg(long)]
    first_byte_timeout: Option<f64>,
    /// Longest gap between two chunks of a response body, in seconds.
    #[arg(long)]
    idle_timeout: Option<f64>,
    /// Connect timeout (DNS, TCP, TLS), in seconds.
    #[arg(long)]
    connect_timeout: Option<f64>,
}

/// A flag's seconds, in (0, 86400].
pub(crate) fn secs(name: &str, v: Option<f64>) -> Result<Option<Duration>, String> {
    v.map(|x| secs_up_to(name, x, 86_400.0)).transpose()
}

/// `--name` as a number of seconds in `(0, max]`.
pub(crate) fn secs_up_to(name: &str, x: f64, max: f64) -> Result<Duration, String> {
    if x.is_finite() && x > 0.0 && x <= max {
        Ok(Duration::from_secs_f64(x))
    } else {
        Err(format!(
            "--{name} must be a number of seconds in (0, {max}], got {x}"
        ))
    }
}

impl TimeoutArgs {
    /// The preset with the flags applied. A value the preset gave gives way to an explicit flag
    /// (`--deadline 30` shortens the interactive attempt to 30 s); two explicit flags that
    /// contradict each other are refused (a first byte not below the attempt, an attempt
    /// longer than the deadline).
    pub(crate) fn resolve(&self) -> Result<TimeoutConfig, String> {
        let mut t = TimeoutConfig::preset(self.preset.workload());
        let deadline = secs("deadline", self.deadline)?;
        let attempt = secs("attempt-timeout", self.attempt_timeout)?;
        let first = secs("first-byte-timeout", self.first_byte_timeout)?;
        let idle = secs("idle-timeout", self.idle_timeout)?;
        let connect = secs("connect-timeout", self.connect_timeout)?;
        if let (Some(f), Some(a)) = (first, attempt) {
            if f >= a {
                return Err(format!(
                    "--first-byte-timeout ({}) is not below --attempt-timeout ({}): a server that hangs before answering would be cut by the attempt timer, which is not retried",
                    show(f),
                    show(a)
                ));
            }
        }
        if let (Some(a), Some(d)) = (attempt, deadline) {
            if a > d {
                return Err(format!(
                    "--attempt-timeout ({}) is longer than --deadline ({})",
                    show(a),
                    show(d)
                ));
            }
        }
        if let (Some(f), Some(d), None) = (first, deadline, attempt) {
            if f > d {
                return Err(format!(
                    "--first-byte-timeout ({}) is longer than --deadline ({})",
                    show(f),
                    show(d)
                ));
            }
        }
        let min = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        if let Some(d) = deadline {
            t.deadline = Some(d);
        }
        match attempt {
            Some(a) => t.attempt = Some(a),
            None => t.attempt = min(t.attempt, t.deadline),
        }
        // An explicit first byte at or over the preset's attempt lengthens the attempt to
        // twice it (and the deadline with it), rather than being cut by a value the user never
        // chose: a hang is still cut by the first-byte timer, which is retried.
        if let Some(f) = first {
            t.headers = Some(f);
            if attempt.is_none() && t.attempt.is_some_and(|a| a <= f) {
                t.attempt = Some(f * 2);
                t.deadline = t.deadline.map(|d| d.max(f * 2));
            }
        }
        // A shorter attempt or deadline shortens the first byte to half the attempt, so that a
        // hang before the head leaves room for a retry (the timeout module's rule).
        t.headers = if first.is_some() {
            t.headers
        } else {
            min(t.headers, t.attempt.map(|a| a / 2))
        };
        t.first_event = min(t.first_event, t.attempt);
        if let Some(i) = idle {
            t.idle = Some(i);
        }
        if let Some(c) = connect {
            t.connect = Some(c);
        }
        t.validate().map_err(|e| e.to_string())?;
        Ok(t)
    }
}

fn show(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Parses a base URL with a real URL parser: `http` or `https`, a host, a valid port, no
/// credentials, no query or fragment. Returns it without a trailing `/`.
pub(crate) fn base_url(flag: &str, raw: &str) -> Result<String, String> {
    match firebreak::client::BaseUrl::parse(raw) {
        Ok(u) => Ok(u.as_str().to_owned()),
        Err(e) if e.is_credentials() => Err(format!(
            "{flag} must not carry credentials; pass the key in FIREWORKS_API_KEY"
        )),
        Err(e) => Err(format!("invalid {flag} {:?}: {}", e.shown(), e.reason())),
    }
}

/// The key: `--api-key` (with a warning that the process list shows it), else the
/// `FIREWORKS_API_KEY` environment variable.
pub(crate) fn api_key(flag: Option<&str>) -> Result<Option<ApiKey>, String> {
    match flag {
        Some(k) => {
            eprintln!(
                "firebreak: warning: --api-key is visible to other users in the process list; set FIREWORKS_API_KEY instead"
            );
            ApiKey::new(k).map(Some).map_err(|e| e.to_string())
        }
        None => match std::env::var("FIREWORKS_API_KEY") {
            Ok(k) if !k.is_empty() => ApiKey::new(k).map(Some).map_err(|e| e.to_string()),
            _ => Ok(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        t: TimeoutArgs,
    }

    fn resolve(args: &[&str]) -> Result<TimeoutConfig, String> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .t
            .resolve()
    }

    #[test]
    fn contradictory_flags_are_refused_and_preset_values_give_way() {
        let e = resolve(&["--first-byte-timeout", "100", "--attempt-timeout", "50"]).unwrap_err();
        assert!(e.contains("not below --attempt-timeout"), "{e}");
        let e = resolve(&["--first-byte-timeout", "50", "--attempt-timeout", "50"]).unwrap_err();
        assert!(e.contains("not retried"), "the old tie: {e}");
        let e = resolve(&["--attempt-timeout", "100", "--deadline", "50"]).unwrap_err();
        assert!(e.contains("longer than --deadline"), "{e}");
        let t = resolve(&["--deadline", "30"]).unwrap();
        assert_eq!(t.attempt, Some(Duration::from_secs(30)));
        assert_eq!(
            t.headers,
            Some(Duration::from_secs(15)),
            "half the attempt: a hang is retried"
        );
        let t = resolve(&["--first-byte-timeout", "300"]).unwrap();
        assert_eq!(
            t.headers,
            Some(Duration::from_secs(300)),
            "not capped at 60 s"
        );
        assert_eq!(t.attempt, Some(Duration::from_secs(600)));
        assert_eq!(t.deadline, Some(Duration::from_secs(600)));
        let t = resolve(&["--preset", "agentic", "--idle-timeout", "5"]).unwrap();
        assert_eq!(t.idle, Some(Duration::from_secs(5)));
        assert_eq!(t.headers, Some(Duration::from_secs(900)));
        assert!(
            resolve(&["--deadline", "0"])
                .unwrap_err()
                .contains("(0, 86400]")
        );
    }

    #[test]
    fn base_urls_are_parsed_for_real() {
        assert_eq!(
            base_url("--base-url", "http://127.0.0.1:8080/v1/").unwrap(),
            "http://127.0.0.1:8080/v1"
        );
        for bad in [
            "http://127.0.0.1:99999/v1",
            "ftp://x/v1",
            "http:///v1",
            "http://user:pw@host/v1",
            "http://host/v1?x=1",
            "not a url",
        ] {
            assert!(base_url("--base-url", bad).is_err(), "{bad}");
        }
        let e = base_url("--upstream", "http://u:secret@h/v1").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn the_preset_help_comes_from_the_library() {
        let h = preset_help();
        for p in ["interactive", "agentic", "long-context", "batch-submit"] {
            assert!(h.contains(p), "{h}");
        }
        assert!(h.contains("30 min"), "{h}");
    }
}

/// `--redis-url` and `--redis-prefix`, shared by `load` and `proxy`: link this process's 429
/// gate with the other firebreak processes of the same account (see `firebreak-redis`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FleetArgs {
    /// Share the account's rate limit, cooldowns and quota state with other firebreak
    /// processes through Redis (`redis://[user:password@]host:port[/db]`). Without Redis
    /// reachable, each process uses its own gate and reconnects in the background. Never
    /// printed.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// The prefix of every Redis key and channel (several applications can share one Redis).
    #[arg(long, default_value = "firebreak", value_name = "PREFIX")]
    redis_prefix: String,
}

impl FleetArgs {
    /// `stack`, linked through Redis when `--redis-url` is set. Call inside the runtime.
    pub(crate) fn apply(&self, stack: firebreak::Stack) -> Result<firebreak::Stack, String> {
        let Some(url) = &self.redis_url else {
            return Ok(stack);
        };
        let cfg = firebreak_redis::RedisConfig {
            prefix: self.redis_prefix.clone(),
            ..firebreak_redis::RedisConfig::new(url)
        };
        firebreak_redis::shared(stack, cfg).map_err(|e| format!("--redis-url: {e}"))
    }
}

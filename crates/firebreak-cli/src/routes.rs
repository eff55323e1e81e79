//! `firebreak proxy --config FILE`: model aliases routed through chains of targets, read from
//! TOML. Every mistake is one line naming the file, the line and the field.
//!
//! ```toml
//! [breaker]                 # optional; these are the defaults
//! consecutive_failures = 5
//! cooldown_secs = 10
//! probes = 1
//!
//! [targets.mine]            # a dedicated deployment
//! model = "accounts/fireworks/models/llama-v3p1-70b-instruct#accounts/acme/deployments/d1"
//! kind = "dedicated"        # serverless | dedicated | auto (default: read from the model id)
//! key_env = "ACME_KEY"      # the key's environment variable (default: the proxy's key)
//! base_url = "https://api.fireworks.ai/inference/v1"   # default: --upstream
//!
//! [targets.serverless]
//! model = "accounts/fireworks/models/llama-v3p1-70b-instruct"
//!
//! [targets.east]
//! model = "accounts/fireworks/models/llama-v3p1-8b-instruct"
//! weight = 3                # its share within a tier
//! [targets.west]
//! model = "accounts/fireworks/models/llama-v3p1-8b-instruct"
//! base_url = "https://other.example/inference/v1"
//!
//! [aliases]
//! small = [["east", "west"]]             # one tier of two, by weight
//! chat = ["mine", "serverless", "small"] # an alias may end in another alias
//! ```

use firebreak::TargetKind;
use firebreak::client::ApiKey;
use firebreak::route::{BreakerConfig, RouteConfig, RouteConfigError, Target};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    breaker: Option<Breaker>,
    #[serde(default)]
    targets: BTreeMap<String, Spanned<TargetDef>>,
    #[serde(default)]
    aliases: BTreeMap<String, Spanned<Vec<Spanned<toml::Value>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Breaker {
    consecutive_failures: Option<Spanned<u32>>,
    cooldown_secs: Option<Spanned<f64>>,
    probes: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetDef {
    model: Spanned<String>,
    base_url: Option<Spanned<String>>,
    key_env: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    weight: Option<Spanned<f64>>,
}

/// A configuration that cannot work: `{file}:{line}: {field}: {message}` (no line when the
/// file cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    file: String,
    line: usize,
    field: String,
    message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: ", self.file)?,
            n => write!(f, "{}:{n}: ", self.file)?,
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|b| *b == b'\n').count() + 1
    }

    fn err(
        &self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            line: self.line(span),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Reads `path`: targets default to `upstream`, and to the proxy's key (`None` in a target
/// means "the router's default key").
pub(crate) fn load(path: &str, upstream: &str) -> Result<RouteConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: 0,
        field: String::new(),
        message: format!("cannot read it: {e}"),
    })?;
    parse(path, &text, upstream, &|name| std::env::var(name).ok())
}

/// Parses a configuration; `env` reads environment variables (a test passes its own).
pub(crate) fn parse(
    file: &str,
    text: &str,
    upstream: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RouteConfig, ConfigError> {
    let cx = Ctx { file, text };
    let parsed: File = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.err(&span, "", e.message().trim().to_owned())
    })?;

    let breaker = breaker_of(&cx, parsed.breaker.as_ref())?;
    let mut targets: BTreeMap<&str, Target> = BTreeMap::new();
    for (name, def) in &parsed.targets {
        if parsed.aliases.contains_key(name) {
            return Err(cx.err(
                &def.span(),
                format!("targets.{name}"),
                "is also an alias: a name means one thing",
            ));
        }
        targets.insert(name.as_str(), target_of(&cx, name, def, upstream, env)?);
    }

    if parsed.aliases.is_empty() {
        return Err(cx.err(
            &(0..0),
            "aliases",
            "no alias is configured: nothing would be routed",
        ));
    }
    let mut cfg = RouteConfig::new().with_breaker(breaker);
    for alias in parsed.aliases.keys() {
        let mut tiers = Vec::new();
        expand(
            &cx,
            &parsed,
            &targets,
            alias,
            &mut vec![alias.as_str()],
            &mut tiers,
        )?;
        let span = parsed.aliases[alias].span();
        let mut seen = std::collections::HashSet::new();
        for t in tiers.iter().flatten() {
            if !seen.insert(t.name().to_owned()) {
                return Err(cx.err(
                    &span,
                    format!("aliases.{alias}"),
                    format!("reaches target {:?} twice: a chain that loops", t.name()),
                ));
            }
        }
        cfg = cfg.alias(alias.as_str(), tiers);
        cfg.validate()
            .map_err(|e| cx.err(&span, format!("aliases.{alias}"), e.to_string()))?;
    }
    Ok(cfg)
}

/// The `[breaker]` table, each mistake named at its line.
fn breaker_of(cx: &Ctx<'_>, b: Option<&Breaker>) -> Result<BreakerConfig, ConfigError> {
    // The values are the library's to check (`BreakerConfig::validate`); here, only where each
    // one is in the file.
    let mut breaker = BreakerConfig::default();
    let mut at: Vec<(&'static str, &'static str, Range<usize>)> = Vec::new();
    if let Some(b) = b {
        if let Some(n) = &b.consecutive_failures {
            breaker.consecutive_failures = *n.get_ref();
            at.push(("consecutive_failures", "consecutive_failures", n.span()));
        }
        if let Some(p) = &b.probes {
            breaker.probes = *p.get_ref();
            at.push(("probes", "probes", p.span()));
        }
        if let Some(c) = &b.cooldown_secs {
            let v = *c.get_ref();
            breaker.cooldown = Duration::try_from_secs_f64(v).map_err(|_| {
                cx.err(
                    &c.span(),
                    "breaker.cooldown_secs",
                    format!("{v} must be in (0, 3600]"),
                )
            })?;
            at.push(("cooldown", "cooldown_secs", c.span()));
        }
    }
    if let Err(RouteConfigError::Breaker { field, why }) = breaker.validate() {
        let (name, span) = at
            .iter()
            .find(|(f, _, _)| *f == field)
            .map_or((field, 0..0), |(_, n, s)| (*n, s.clone()));
        return Err(cx.err(&span, format!("breaker.{name}"), why));
    }
    Ok(breaker)
}

/// One `[targets.NAME]` table, each mistake named at its line.
fn target_of(
    cx: &Ctx<'_>,
    name: &str,
    def: &Spanned<TargetDef>,
    upstream: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Target, ConfigError> {
    let field = |f: &str| format!("targets.{name}.{f}");
    let d = def.get_ref();
    let base = d
        .base_url
        .as_ref()
        .map_or(upstream, |b| b.get_ref().as_str());
    let mut t = Target::new(name, base, d.model.get_ref().as_str());
    if let Some(k) = &d.kind {
        let kind: TargetKind = k
            .get_ref()
            .parse()
            .map_err(|e: String| cx.err(&k.span(), field("kind"), e))?;
        t = t.with_kind(kind);
    }
    if let Some(w) = &d.weight {
        t = t.weight(*w.get_ref());
    }
    // The values are the library's to check (`Target::validate`); here, only where each
    // one is in the file.
    if let Err(RouteConfigError::Target { field: f, why, .. }) = t.validate() {
        let span = match f {
            "base_url" => d.base_url.as_ref().map(Spanned::span),
            "model" => Some(d.model.span()),
            "weight" => d.weight.as_ref().map(Spanned::span),
            _ => None,
        }
        .unwrap_or_else(|| def.span());
        return Err(cx.err(&span, field(f), why));
    }
    if let Some(k) = &d.key_env {
        let var = k.get_ref();
        let value = env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
            cx.err(
                &k.span(),
                field("key_env"),
                format!("the environment variable {var} is not set"),
            )
        })?;
        // The key itself is never echoed.
        let key = ApiKey::new(value).map_err(|e| {
            cx.err(
                &k.span(),
                field("key_env"),
                format!("{var} does not hold a usable key: {e}"),
            )
        })?;
        t = t.key(key);
    }
    Ok(t)
}

/// The tiers of `alias`, with the aliases it names expanded in place; `path` is the aliases
/// being expanded (a repeat is a loop).
fn expand<'f>(
    cx: &Ctx<'_>,
    parsed: &'f File,
    targets: &BTreeMap<&str, Target>,
    alias: &str,
    path: &mut Vec<&'f str>,
    out: &mut Vec<Vec<Target>>,
) -> Result<(), ConfigError> {
    let entries = &parsed.aliases[alias];
    let field = format!("aliases.{alias}");
    if entries.get_ref().is_empty() {
        return Err(cx.err(&entries.span(), field, "is an empty chain"));
    }
    let target = |name: &str, span: &Range<usize>| {
        targets.get(name).cloned().ok_or_else(|| {
            cx.err(
                span,
                field.clone(),
                format!("names {name:?}, which is neither a target nor an alias"),
            )
        })
    };
    for e in entries.get_ref() {
        let span = e.span();
        match e.get_ref() {
            toml::Value::String(name) if parsed.aliases.contains_key(name) => {
                if path.contains(&name.as_str()) {
                    return Err(cx.err(
                        &span,
                        field,
                        format!("{} → {name}: a chain that loops", path.join(" → ")),
                    ));
                }
                let (name, _) = parsed
                    .aliases
                    .get_key_value(name)
                    .ok_or_else(|| cx.err(&span, field.clone(), "unknown alias"))?;
                path.push(name);
                expand(cx, parsed, targets, name, path, out)?;
                path.pop();
            }
            toml::Value::String(name) => out.push(vec![target(name, &span)?]),
            toml::Value::Array(tier) if !tier.is_empty() => {
                let mut members = Vec::new();
                for m in tier {
                    match m.as_str() {
                        Some(name) => members.push(target(name, &span)?),
                        None => {
                            return Err(cx.err(
                                &span,
                                field,
                                "a tier lists target names (strings)",
                            ));
                        }
                    }
                }
                out.push(members);
            }
            _ => {
                return Err(cx.err(
                    &span,
                    field,
                    "an entry is a target or alias name, or a list of target names (one tier)",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: &str = "http://127.0.0.1:9/v1";

    fn env(name: &str) -> Option<String> {
        (name == "ACME_KEY").then(|| "fw_acme_secret".to_owned())
    }

    fn parse_str(text: &str) -> Result<RouteConfig, ConfigError> {
        parse("routes.toml", text, UP, &env)
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("routes.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let cfg = parse_str(&example).unwrap();
        cfg.validate().unwrap();
        let s = format!("{cfg:?}");
        assert!(!s.contains("fw_acme_secret"), "a key in Debug: {s}");
    }

    #[test]
    fn each_mistake_names_the_file_line_and_field() {
        let cases: &[(&str, &str)] = &[
            (
                "[targets.a]\nmodel = \"m\"\nweight = 0\n[aliases]\nx = [\"a\"]\n",
                "routes.toml:3: targets.a.weight: 0 must be a positive number",
            ),
            (
                "[targets.a]\nmodel = \"m\"\nweight = nan\n[aliases]\nx = [\"a\"]\n",
                "routes.toml:3: targets.a.weight: NaN",
            ),
            (
                "[targets.a]\nmodel = \"m\"\nkey_env = \"NOPE\"\n[aliases]\nx = [\"a\"]\n",
                "routes.toml:3: targets.a.key_env: the environment variable NOPE is not set",
            ),
            (
                "[targets.a]\nmodel = \"m\"\nbase_url = \"ftp://h\"\n[aliases]\nx = [\"a\"]\n",
                "routes.toml:3: targets.a.base_url",
            ),
            (
                "[targets.a]\nmodel = \"m\"\nkind = \"big\"\n[aliases]\nx = [\"a\"]\n",
                "routes.toml:3: targets.a.kind: unknown kind",
            ),
            (
                "[targets.a]\nmodel = \"m\"\n[aliases]\nx = [\"y\"]\ny = [\"a\", \"x\"]\n",
                "a chain that loops",
            ),
            (
                "[targets.a]\nmodel = \"m\"\n[aliases]\nx = [\"a\", \"a\"]\n",
                "routes.toml:4: aliases.x: reaches target \"a\" twice",
            ),
            (
                "[targets.a]\nmodel = \"m\"\n[aliases]\nx = [\"b\"]\n",
                "routes.toml:4: aliases.x: names \"b\"",
            ),
            (
                "[targets.a]\nmodel = \"m\"\ncolour = 1\n[aliases]\nx = [\"a\"]\n",
                "routes.toml:3: unknown field `colour`",
            ),
            ("[targets.a]\nmodel = \"m\"\n", "aliases: no alias"),
            ("[breaker]\nprobes = 0\n", "routes.toml:2: breaker.probes"),
            ("[aliases\n", "routes.toml:1:"),
        ];
        for (text, want) in cases {
            let e = parse_str(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    #[test]
    fn aliases_expand_and_tiers_keep_their_weights() {
        let cfg = parse_str(
            "[targets.a]\nmodel = \"accounts/acme/deployedModels/a\"\nkey_env = \"ACME_KEY\"\n[targets.b]\nmodel = \"accounts/fireworks/models/b\"\nweight = 2\n[targets.c]\nmodel = \"accounts/fireworks/models/c\"\n[aliases]\nsmall = [[\"b\", \"c\"]]\nchat = [\"a\", \"small\"]\n",
        )
        .unwrap();
        let dbg = format!("{cfg:?}");
        assert!(
            dbg.contains("Dedicated") && dbg.contains("weight: 2.0"),
            "{dbg}"
        );
        assert!(!dbg.contains("fw_acme_secret"));
    }
}

//! What a router is made of: [`Target`]s, chains of them per alias ([`RouteConfig`]), and the
//! [`BreakerConfig`]; [`RouteConfigError`] for a configuration that cannot work.

use crate::TargetKind;
use crate::client::ApiKey;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One place a model can be served: a base URL, the model id to send there, the key to send
/// it with, and where it runs.
///
/// ```
/// use firebreak::route::Target;
/// use firebreak::TargetKind;
///
/// let t = Target::new("primary", "https://api.fireworks.ai/inference/v1", "llama#accounts/acme/deployments/d1");
/// assert_eq!(t.kind(), TargetKind::Dedicated); // `auto` read from the model id
/// ```
#[derive(Clone)]
pub struct Target {
    pub(crate) name: Arc<str>,
    pub(crate) base_url: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) key: Option<ApiKey>,
    pub(crate) kind: TargetKind,
    pub(crate) weight: f64,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key's own `Debug` is redacted; say only whether there is one.
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("kind", &self.kind)
            .field("weight", &self.weight)
            .finish()
    }
}

impl Target {
    /// A target named `name` (its label in metrics and the `firebreak-target` header) serving
    /// `model` at `base_url`; kind `auto`, weight 1, and the router's key.
    pub fn new(
        name: impl Into<Arc<str>>,
        base_url: impl AsRef<str>,
        model: impl Into<Arc<str>>,
    ) -> Self {
        let model = model.into();
        Target {
            name: name.into(),
            base_url: base_url.as_ref().trim_end_matches('/').into(),
            kind: TargetKind::of_model(&model),
            model,
            key: None,
            weight: 1.0,
        }
    }

    /// Sends this target's requests with `key` (otherwise the router's default key, if any).
    pub fn key(mut self, key: ApiKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Sets where it runs; `Auto` reads the model id ([`TargetKind::of_model`]).
    pub fn with_kind(mut self, kind: TargetKind) -> Self {
        self.kind = kind.resolve(&self.model);
        self
    }

    /// Its share of the traffic among the targets of the same tier (positive, finite).
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model id it is sent.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Where it runs, resolved from the model id when configured `auto` (still `Auto` when the
    /// id does not say).
    pub fn kind(&self) -> TargetKind {
        self.kind
    }
}

/// When a target's circuit breaker opens and how it comes back (see the
/// [module docs](crate::route)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Failed attempts in a row that open it (5, as Envoy's `consecutive_5xx`).
    pub consecutive_failures: u32,
    /// How long it stays open before probes are let through (10 s).
    pub cooldown: Duration,
    /// Probes in flight at once while half-open (1).
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            cooldown: Duration::from_secs(10),
            probes: 1,
        }
    }
}

/// Aliases, each an ordered chain of tiers of targets, and the breaker settings.
///
/// A chain is tried tier by tier: within a tier one target is picked by weight among those
/// that can take the call; the next tier is tried when the tier's targets are open, holding
/// (their gate is cooling down), or have just failed the call with a retryable class.
///
/// ```
/// use firebreak::route::{RouteConfig, Target};
///
/// let base = "https://api.fireworks.ai/inference/v1";
/// let cfg = RouteConfig::new()
///     .alias("chat", vec![
///         vec![Target::new("mine", base, "llama#accounts/acme/deployments/d1")],
///         vec![Target::new("serverless", base, "accounts/fireworks/models/llama-v3p1-70b-instruct")],
///         vec![Target::new("small", base, "accounts/fireworks/models/llama-v3p1-8b-instruct")],
///     ]);
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    pub(crate) aliases: Vec<(Arc<str>, Vec<Vec<Target>>)>,
    /// Breaker settings, the same for every target.
    pub breaker: BreakerConfig,
}

impl RouteConfig {
    /// No aliases, default breakers.
    pub fn new() -> Self {
        RouteConfig::default()
    }

    /// Sets the breaker settings.
    pub fn with_breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Adds `alias`, served by `tiers` in order.
    pub fn alias(mut self, alias: impl Into<Arc<str>>, tiers: Vec<Vec<Target>>) -> Self {
        self.aliases.push((alias.into(), tiers));
        self
    }

    /// The simple case: `alias` served by `models` in order, one target per tier, all at
    /// `base_url` with the router's key, kinds read from the ids (`firebreak load --fallback`).
    pub fn fallbacks(self, alias: impl Into<Arc<str>>, base_url: &str, models: &[&str]) -> Self {
        let tiers = models
            .iter()
            .map(|m| vec![Target::new(*m, base_url, *m)])
            .collect();
        self.alias(alias, tiers)
    }

    /// Checks the whole configuration.
    ///
    /// # Errors
    /// The first [`RouteConfigError`] found.
    pub fn validate(&self) -> Result<(), RouteConfigError> {
        self.breaker.validate()?;
        let mut by_name: HashMap<&str, &Target> = HashMap::new();
        let mut seen_alias = std::collections::HashSet::new();
        for (alias, tiers) in &self.aliases {
            if !seen_alias.insert(&**alias) {
                return Err(RouteConfigError::Alias {
                    alias: alias.to_string(),
                    why: "is defined twice".into(),
                });
            }
            if tiers.is_empty() || tiers.iter().any(Vec::is_empty) {
                return Err(RouteConfigError::Alias {
                    alias: alias.to_string(),
                    why: "has an empty chain or tier".into(),
                });
            }
            let mut in_chain = std::collections::HashSet::new();
            for t in tiers.iter().flatten() {
                if !in_chain.insert(&*t.name) {
                    return Err(RouteConfigError::Alias {
                        alias: alias.to_string(),
                        why: format!("names target {:?} twice (a chain that loops)", t.name),
                    });
                }
                t.validate()?;
                match by_name.get(&*t.name) {
                    Some(o)
                        if o.base_url != t.base_url || o.model != t.model || o.kind != t.kind =>
                    {
                        return Err(RouteConfigError::Target {
                            target: t.name.to_string(),
                            field: "name",
                            why: "is defined twice, differently".into(),
                        });
                    }
                    _ => {
                        by_name.insert(&t.name, t);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Target {
    /// Checks the target alone: a printable name, an http(s) base URL with a host, a model, a
    /// positive weight. [`RouteConfig::validate`] calls it for every target.
    ///
    /// # Errors
    /// [`RouteConfigError::Target`] naming the field.
    pub fn validate(&self) -> Result<(), RouteConfigError> {
        let bad = |field: &'static str, why: String| {
            Err(RouteConfigError::Target {
                target: self.name.to_string(),
                field,
                why,
            })
        };
        if self.name.is_empty()
            || self.name.len() > 256
            || self.name.chars().any(|c| c.is_control())
        {
            return bad("name", "must be 1 to 256 printable characters".into());
        }
        if let Err(e) = crate::client::BaseUrl::parse(&self.base_url) {
            return bad("base_url", e.to_string());
        }
        if self.model.is_empty() {
            return bad("model", "must not be empty".into());
        }
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return bad(
                "weight",
                format!("{} must be a positive number", self.weight),
            );
        }
        Ok(())
    }
}

impl BreakerConfig {
    crate::setters! {
        consecutive_failures: u32,
        cooldown: Duration,
        probes: u32,
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`RouteConfigError::Breaker`] naming the field.
    pub fn validate(&self) -> Result<(), RouteConfigError> {
        let bad = |field: &'static str, why: String| Err(RouteConfigError::Breaker { field, why });
        if self.consecutive_failures == 0 {
            return bad("consecutive_failures", "must be at least 1".into());
        }
        if self.probes == 0 {
            return bad("probes", "must be at least 1".into());
        }
        if self.cooldown.is_zero() || self.cooldown > Duration::from_secs(3600) {
            return bad(
                "cooldown",
                format!("{:?} must be in (0, 1 h]", self.cooldown),
            );
        }
        Ok(())
    }
}

/// A route configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteConfigError {
    /// An alias's chain.
    #[error("route alias {alias:?} {why}")]
    Alias {
        /// The alias.
        alias: String,
        /// What is wrong.
        why: String,
    },
    /// A target.
    #[error("route target {target:?}: {field}: {why}")]
    Target {
        /// The target's name.
        target: String,
        /// The setting at fault (`name`, `base_url`, `model`, `weight`).
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The breaker settings.
    #[error("breaker: {field}: {why}")]
    Breaker {
        /// The setting at fault (`consecutive_failures`, `probes`, `cooldown`).
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The stack under the targets.
    #[error("{0}")]
    Stack(String),
}

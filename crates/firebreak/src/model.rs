//! [`Model`]: the model a request is for, read once from its body and carried in its extensions.

use std::sync::Arc;

/// The model a request is for, in the request extensions, so that layers can use it without
/// reading the body: the gate keys on it ([`KeyBy::ApiKeyAndModel`](crate::gate::KeyBy)), and
/// observation labels attempts and calls with it (bounded; see
/// [`Observer::with_model_cap`](crate::observe::Observer::with_model_cap)).
/// `FireworksClient::post` and `firebreak proxy` set it from the body's `model`.
///
/// ```
/// use firebreak::Model;
///
/// let m = Model::from_json_body(br#"{"model":"llama-v3p1-8b#accounts/acme/deployments/d1"}"#).unwrap();
/// assert_eq!(m.deployment(), Some("accounts/acme/deployments/d1"));
/// assert_eq!(Model::from_json_body(b"not json"), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Model(pub Arc<str>);

impl Model {
    /// The `model` of a JSON request body, if it names one (a body that is not JSON, or has no
    /// string `model`, gives `None`).
    pub fn from_json_body(body: &[u8]) -> Option<Model> {
        #[derive(serde::Deserialize)]
        struct M<'a> {
            #[serde(borrow)]
            model: Option<std::borrow::Cow<'a, str>>,
        }
        let m = serde_json::from_slice::<M<'_>>(body).ok()?.model?;
        Some(Model(Arc::from(m.as_ref())))
    }

    /// The dedicated deployment this model id names, as Fireworks' exporter labels it
    /// (`deployment="accounts/{account}/deployments/{id}"`), when the id has the form
    /// `{base model}#accounts/{account}/deployments/{id}`.
    ///
    /// `None` for anything else: serverless ids (`accounts/fireworks/models/…`), and also
    /// `accounts/{a}/deployedModels/{name}`, which does name a deployment but not which one (its
    /// id is known only to the control plane), so its traffic cannot be matched to the
    /// exporter's series by name.
    pub fn deployment(&self) -> Option<&str> {
        let (_, dep) = self.0.split_once('#')?;
        let (account, id) = dep.strip_prefix("accounts/")?.split_once("/deployments/")?;
        let plain = |s: &str| !s.is_empty() && !s.contains(['/', '#']);
        (plain(account) && plain(id)).then_some(dep)
    }
}

/// Where a model runs, which decides what a 429 means (Fireworks' guide):
/// - **serverless**: limits are the account's rates, stated in `x-ratelimit-*` headers; a 429
///   is a rate limit, paced and cooled down as a fleet. More capacity now: a dedicated
///   deployment.
/// - **dedicated**: no hard rate limits, only the replicas' capacity; a 429 or a 503
///   "overloaded" is a capacity refusal, and the gate narrows its concurrency window instead
///   of pacing. More capacity: raise replicas or autoscaling (`firectl deployment update`).
///
/// [`TargetKind::Auto`] reads the model id ([`TargetKind::of_model`]):
/// `accounts/fireworks/models/…` is serverless; `accounts/{a}/deployedModels/…` and
/// `{model}#accounts/{a}/deployments/{id}` are dedicated. Anything else (a model of your own
/// account, `accounts/{a}/models/…`, which may be served either way, or a short name) stays
/// unknown, and the gate tells the two apart per answer: a 429 with rate headers or a
/// rate-limit body is a rate limit, one without is a capacity refusal. What the id cannot say:
/// whether a serverless model is also deployed on your account, or how many replicas a
/// deployment has.
///
/// ```
/// use firebreak::TargetKind;
///
/// assert_eq!(TargetKind::of_model("accounts/fireworks/models/llama-v3p1-8b-instruct"), TargetKind::Serverless);
/// assert_eq!(TargetKind::of_model("llama#accounts/acme/deployments/d1"), TargetKind::Dedicated);
/// assert_eq!(TargetKind::of_model("accounts/acme/models/mine"), TargetKind::Auto);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TargetKind {
    /// Decided per answer (and, where a kind is resolved from a model, from its id).
    #[default]
    Auto,
    /// A serverless model: the account's rate limits.
    Serverless,
    /// A dedicated deployment: its replicas' capacity.
    Dedicated,
}

impl TargetKind {
    /// The kind a model id names, [`TargetKind::Auto`] when it does not say.
    pub fn of_model(model: &str) -> TargetKind {
        let rest = model.strip_prefix("accounts/");
        // A deployment named after `#` wins: `accounts/fireworks/models/x#accounts/a/deployments/d`
        // is a serverless base model on a dedicated deployment.
        if Model(Arc::from(model)).deployment().is_some()
            || rest
                .and_then(|r| r.split_once('/'))
                .is_some_and(|(a, r)| !a.is_empty() && r.starts_with("deployedModels/"))
        {
            return TargetKind::Dedicated;
        }
        if rest.is_some_and(|r| r.starts_with("fireworks/models/") && !r.contains('#')) {
            return TargetKind::Serverless;
        }
        TargetKind::Auto
    }

    /// `self`, or for [`TargetKind::Auto`] the kind `model` names.
    pub fn resolve(self, model: &str) -> TargetKind {
        match self {
            TargetKind::Auto => TargetKind::of_model(model),
            k => k,
        }
    }

    /// The lowercase name (`auto`, `serverless`, `dedicated`), as configuration files spell it.
    pub fn label(self) -> &'static str {
        match self {
            TargetKind::Auto => "auto",
            TargetKind::Serverless => "serverless",
            TargetKind::Dedicated => "dedicated",
        }
    }
}

impl std::str::FromStr for TargetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TargetKind::Auto),
            "serverless" => Ok(TargetKind::Serverless),
            "dedicated" => Ok(TargetKind::Dedicated),
            other => Err(format!(
                "unknown kind {other:?}: expected serverless, dedicated or auto"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Model, TargetKind};
    use std::sync::Arc;

    fn m(s: &str) -> Model {
        Model(Arc::from(s))
    }

    #[test]
    fn deployment_ids_follow_the_exporters_labels() {
        assert_eq!(
            m("qwen#accounts/acme/deployments/abc123").deployment(),
            Some("accounts/acme/deployments/abc123")
        );
        for not in [
            "accounts/fireworks/models/llama-v3p1-8b-instruct",
            "accounts/acme/deployedModels/my-model",
            "qwen#accounts//deployments/x",
            "qwen#accounts/acme/deployments/",
            "qwen#accounts/acme/deployments/a/b",
            "qwen#accounts/acme/models/x",
            "#",
            "",
        ] {
            assert_eq!(m(not).deployment(), None, "{not}");
        }
    }

    #[test]
    fn the_kind_of_a_model_id() {
        use TargetKind::*;
        for (id, kind) in [
            (
                "accounts/fireworks/models/llama-v3p1-8b-instruct",
                Serverless,
            ),
            ("accounts/acme/deployedModels/my-llama-abc", Dedicated),
            ("llama#accounts/acme/deployments/d1", Dedicated),
            (
                "accounts/fireworks/models/llama#accounts/acme/deployments/d1",
                Dedicated,
            ),
            ("accounts/acme/models/mine", Auto),
            ("accounts//deployedModels/x", Auto),
            ("llama-v3p1-8b-instruct", Auto),
            ("", Auto),
        ] {
            assert_eq!(TargetKind::of_model(id), kind, "{id}");
        }
        assert_eq!(Dedicated.resolve("accounts/fireworks/models/x"), Dedicated);
        for k in [Auto, Serverless, Dedicated] {
            assert_eq!(k.label().parse::<TargetKind>(), Ok(k));
        }
        assert!("Dedicated".parse::<TargetKind>().is_err());
    }

    #[test]
    fn the_body_model_is_read_leniently() {
        assert_eq!(
            Model::from_json_body(br#"{"model":"a","x":1}"#),
            Some(m("a"))
        );
        assert_eq!(Model::from_json_body(br#"{"x":1}"#), None);
        assert_eq!(Model::from_json_body(br#"{"model":7}"#), None);
        assert_eq!(Model::from_json_body(b"[1,2]"), None);
    }
}

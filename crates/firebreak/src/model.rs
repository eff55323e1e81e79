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

#[cfg(test)]
mod tests {
    use super::Model;
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

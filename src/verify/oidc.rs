//! `generic-oidc` (Flux v1.9+): an OIDC ID token in `Authorization: Bearer`, from one of the
//! issuers in `oidc_providers`. The token's unverified `iss` only picks the provider; its keys
//! (found through discovery, or given as `jwks`) then verify the signature, `exp`, `iss` and
//! `aud`, and the provider's CEL `variables` and `validations` decide whether this token may
//! trigger the receiver. The verified claims are what the filters see as `claims`.

use super::jwks::{bearer, check_url, Expect, KeySet, Source, ASYMMETRIC};
use super::{BodyCheck, Evidence, OptionError, TypeOptions, Verifier};
use crate::expr::{Expr, Scope};
use crate::refusal::Refusal;
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// Flux's `DefaultOIDCAudience`.
pub const DEFAULT_AUDIENCE: &str = "notification-controller";

/// go-oidc's leeway on `nbf`.
const NBF_LEEWAY: Duration = Duration::from_secs(5 * 60);

/// One entry of `oidc_providers`, as Flux's `OIDCProvider`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    #[serde(default)]
    #[serde(alias = "issuerURL")]
    pub issuer_url: String,
    /// Default: `notification-controller`.
    pub audience: Option<String>,
    #[serde(default)]
    pub variables: Vec<VariableSpec>,
    #[serde(default)]
    pub validations: Vec<ValidationSpec>,
    /// The issuer's keys at a URL or in a file, instead of OIDC discovery.
    pub jwks: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub expression: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSpec {
    #[serde(default)]
    pub expression: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug)]
struct Provider {
    issuer: String,
    audience: String,
    variables: Vec<(String, Expr)>,
    /// Each expression with the message sent when it does not hold.
    validations: Vec<(Expr, String)>,
    keys: Arc<KeySet>,
}

#[derive(Debug)]
pub struct GenericOidc {
    providers: Vec<Provider>,
}

impl GenericOidc {
    /// Flux's `ValidateOIDCProvidersSpec` and `CompileOIDCProviders`, reporting every problem
    /// rather than the first.
    pub fn new(options: &TypeOptions) -> Result<Self, Vec<OptionError>> {
        let mut problems = Vec::new();
        if options.oidc_providers.is_empty() {
            problems.push((
                "oidc_providers".to_string(),
                "none; type generic-oidc needs at least one issuer it trusts".to_string(),
            ));
        }
        let mut providers = Vec::new();
        for (i, spec) in options.oidc_providers.iter().enumerate() {
            let key = format!("oidc_providers[{i}]");
            let before = problems.len();
            let mut add = |field: &str, why: String| problems.push((format!("{key}.{field}"), why));
            if spec.issuer_url.is_empty() {
                add("issuer_url", "missing".into());
            } else if !(spec.issuer_url.starts_with("https://")
                || spec.issuer_url.starts_with("http://"))
            {
                add(
                    "issuer_url",
                    format!("{:?} must start with http:// or https://", spec.issuer_url),
                );
            } else if let Err(e) = check_url(&spec.issuer_url) {
                add("issuer_url", e);
            } else if let Some(j) = options.oidc_providers[..i]
                .iter()
                .position(|o| o.issuer_url == spec.issuer_url)
            {
                add(
                    "issuer_url",
                    format!("{:?} is already oidc_providers[{j}]'s", spec.issuer_url),
                );
            }
            let audience = spec.audience.as_deref().unwrap_or(DEFAULT_AUDIENCE);
            if audience.is_empty() {
                add(
                    "audience",
                    format!("empty; leave it out for the default {DEFAULT_AUDIENCE:?}"),
                );
            }
            let source = match &spec.jwks {
                Some(j) => Source::parse(j).map_err(|e| add("jwks", e)).ok(),
                None => Some(Source::Discovery(spec.issuer_url.clone())),
            };
            if spec.validations.is_empty() {
                add(
                    "validations",
                    "none; at least one is required, or anyone who can get a token from this issuer could trigger the receiver".into(),
                );
            }
            let mut variables = Vec::new();
            for (j, v) in spec.variables.iter().enumerate() {
                if v.name.is_empty() {
                    add(&format!("variables[{j}].name"), "missing".into());
                }
                match Expr::compile(&v.expression, Scope::Variable) {
                    Ok(e) => variables.push((v.name.clone(), e)),
                    Err(e) => add(&format!("variables[{j}].expression"), e),
                }
            }
            let mut validations = Vec::new();
            for (j, v) in spec.validations.iter().enumerate() {
                // Sent back as part of a one-line reason.
                let message = v.message.split_whitespace().collect::<Vec<_>>().join(" ");
                if message.is_empty() {
                    add(&format!("validations[{j}].message"), "missing".into());
                }
                match Expr::compile(&v.expression, Scope::Claims) {
                    Ok(e) => validations.push((e, message)),
                    Err(e) => add(&format!("validations[{j}].expression"), e),
                }
            }
            if let (Some(keys), true) = (source, problems.len() == before) {
                providers.push(Provider {
                    issuer: spec.issuer_url.clone(),
                    audience: audience.to_string(),
                    variables,
                    validations,
                    keys: KeySet::shared(keys),
                });
            }
        }
        if problems.is_empty() {
            Ok(GenericOidc { providers })
        } else {
            Err(problems)
        }
    }
}

#[async_trait]
impl Verifier for GenericOidc {
    /// A request without a bearer token is refused before its body is read.
    fn begin(&self, head: &HeaderMap) -> Result<BodyCheck, Refusal> {
        bearer(head, true)?;
        Ok(BodyCheck::Nothing)
    }

    fn authenticates(&self) -> bool {
        true
    }

    /// The token is in the head; the body is only kept if a filter or forwarding needs it.
    fn reads_body(&self) -> bool {
        false
    }

    /// Signature, `exp`, `iss`, `aud` and the CEL validations, all from the head: the body is
    /// not read before they pass.
    async fn authenticate(&self, head: &HeaderMap) -> Result<Evidence, Refusal> {
        let token = bearer(head, true)?;
        let issuer = unverified_issuer(token)?;
        let p = self
            .providers
            .iter()
            .find(|p| p.issuer == issuer)
            .ok_or_else(|| {
                Refusal::unauthorized("no oidc_providers entry for the token's issuer")
            })?;
        let expect = Expect {
            issuers: &[p.issuer.as_str()],
            audience: &p.audience,
            algorithms: ASYMMETRIC,
            nbf_leeway: Some(NBF_LEEWAY),
        };
        let claims = Value::Object(p.keys.verify(token, &expect).await?);
        p.validate(&claims)?;
        Ok(Evidence {
            claims: Some(claims),
            ..Evidence::default()
        })
    }

    fn key_sets(&self) -> Vec<&KeySet> {
        self.providers.iter().map(|p| &*p.keys).collect()
    }
}

impl Provider {
    /// The variables in order, each seeing those before it, then every validation; the
    /// messages of those that fail, joined with "; " as Flux joins them.
    fn validate(&self, claims: &Value) -> Result<(), Refusal> {
        let mut vars = Map::new();
        for (name, e) in &self.variables {
            let v = e
                .eval(&[("claims", claims), ("vars", &Value::Object(vars.clone()))])
                .map_err(|why| {
                    tracing::debug!(issuer = %self.issuer, "variable {name:?}: {why}");
                    Refusal::unauthorized(format!(
                        "token validation failed: variable {name:?} cannot be evaluated for this token"
                    ))
                })?;
            vars.insert(name.clone(), v);
        }
        let vars = Value::Object(vars);
        let mut failed = Vec::new();
        for (e, message) in &self.validations {
            match e.eval_bool(&[("claims", claims), ("vars", &vars)]) {
                Ok(true) => {}
                Ok(false) => failed.push(message.as_str()),
                Err(why) => {
                    tracing::debug!(issuer = %self.issuer, "validation {message:?}: {why}");
                    return Err(Refusal::unauthorized(format!(
                        "token validation failed: {message:?} cannot be evaluated for this token"
                    )));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Refusal::unauthorized(format!(
                "token validation failed: {}",
                failed.join("; ")
            )))
        }
    }
}

/// The `iss` claim, read without verification only to choose the provider, as Flux does.
fn unverified_issuer(token: &str) -> Result<String, Refusal> {
    let malformed = || Refusal::unauthorized("malformed token: not a signed JWT");
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| malformed())?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload).map_err(|_| malformed())?;
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if !iss.is_empty() => Ok(iss.to_string()),
        _ => Err(Refusal::unauthorized("token has no iss claim")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::jwks::test_support::{jwks, now, TestKey};
    use crate::verify::test_support::head;
    use serde_json::json;

    fn spec(issuer: &str, jwks: Option<String>) -> ProviderSpec {
        ProviderSpec {
            issuer_url: issuer.into(),
            audience: None,
            variables: vec![VariableSpec {
                name: "repo".into(),
                expression: "claims.repository.split('/')".into(),
            }],
            validations: vec![
                ValidationSpec {
                    expression: "vars.repo[0] == 'acme'".into(),
                    message: "only acme's repositories".into(),
                },
                ValidationSpec {
                    expression: "claims.ref == 'refs/heads/main'".into(),
                    message: "only from main".into(),
                },
            ],
            jwks,
        }
    }

    fn options(providers: Vec<ProviderSpec>) -> TypeOptions {
        TypeOptions {
            oidc_providers: providers,
            ..TypeOptions::default()
        }
    }

    /// As in Flux, a validation must yield a bool and a variable may be any value; both are
    /// checked for undeclared names at load.
    #[test]
    fn validations_must_yield_a_bool_and_variables_need_not() {
        let mut s = spec("https://a.example", None);
        s.variables[0].expression = "'literal'".into();
        s.validations[0].expression = "claims.sub".into();
        let e = GenericOidc::new(&options(vec![s])).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "oidc_providers[0].validations[0].expression");
        assert!(e[0].1.contains("yields a field of its input"), "{e:?}");
        let mut s = spec("https://a.example", None);
        s.variables[0].expression = "clams.sub".into();
        let e = GenericOidc::new(&options(vec![s])).unwrap_err();
        assert_eq!(e[0].0, "oidc_providers[0].variables[0].expression");
        assert_eq!(e[0].1, "undeclared reference to 'clams'");
    }

    #[test]
    fn provider_specs_are_checked_like_flux() {
        let keys = |o: TypeOptions| -> Vec<String> {
            GenericOidc::new(&o)
                .unwrap_err()
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(keys(options(vec![])), ["oidc_providers"]);
        let mut bad = spec("ftp://issuer", Some("https://".into()));
        bad.audience = Some(String::new());
        bad.variables[0].name.clear();
        bad.variables[0].expression = "claims.".into();
        bad.validations[1].message = " \n".into();
        bad.validations[1].expression = "res.metadata.name == 'x'".into();
        assert_eq!(
            keys(options(vec![bad])),
            [
                "oidc_providers[0].issuer_url",
                "oidc_providers[0].audience",
                "oidc_providers[0].jwks",
                "oidc_providers[0].variables[0].name",
                "oidc_providers[0].variables[0].expression",
                "oidc_providers[0].validations[1].message",
                "oidc_providers[0].validations[1].expression",
            ]
        );
        let mut none = spec("https://b.example", None);
        none.validations.clear();
        assert_eq!(
            keys(options(vec![
                spec("https://a.example", None),
                spec("https://a.example", None),
                none
            ])),
            [
                "oidc_providers[1].issuer_url",
                "oidc_providers[2].validations"
            ]
        );
        let ok = GenericOidc::new(&options(vec![spec("http://a.example", None)])).unwrap();
        assert_eq!(ok.providers[0].audience, DEFAULT_AUDIENCE);
    }

    #[tokio::test]
    async fn claims_pick_the_provider_and_pass_its_validations() {
        let k = TestKey::new("ci");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, jwks(&[&k])).unwrap();
        let v = GenericOidc::new(&options(vec![spec(
            "https://token.actions.example",
            Some(file.display().to_string()),
        )]))
        .unwrap();
        let run = |repo: &str, r#ref: &str, iss: &str| {
            let c = json!({"iss": iss, "aud": DEFAULT_AUDIENCE, "exp": now() + 300,
                           "repository": repo, "ref": r#ref});
            let auth = format!("Bearer {}", k.sign(&c));
            let v = &v;
            async move { v.authenticate(&head(&[("authorization", &auth)])).await }
        };
        let e = run(
            "acme/app",
            "refs/heads/main",
            "https://token.actions.example",
        )
        .await
        .unwrap();
        assert_eq!(e.claims.unwrap()["repository"], "acme/app");
        let r = run(
            "evil/app",
            "refs/heads/dev",
            "https://token.actions.example",
        )
        .await
        .unwrap_err();
        assert_eq!(
            (r.status, r.reason.as_ref()),
            (
                401,
                "token validation failed: only acme's repositories; only from main"
            )
        );
        let r = run("acme/app", "refs/heads/main", "https://other.example")
            .await
            .unwrap_err();
        assert_eq!(r.reason, "no oidc_providers entry for the token's issuer");
        // A claim the variable needs is missing.
        let c = json!({"iss": "https://token.actions.example", "aud": DEFAULT_AUDIENCE, "exp": now() + 300});
        let auth = format!("Bearer {}", k.sign(&c));
        let r = v
            .authenticate(&head(&[("authorization", &auth)]))
            .await
            .unwrap_err();
        assert_eq!(
            r.reason,
            "token validation failed: variable \"repo\" cannot be evaluated for this token"
        );
    }

    #[test]
    fn the_issuer_is_read_unverified() {
        let enc = |v: &str| URL_SAFE_NO_PAD.encode(v);
        let t = format!("{}.{}.sig", enc("{}"), enc(r#"{"iss":"https://i"}"#));
        assert_eq!(unverified_issuer(&t).unwrap(), "https://i");
        for bad in ["a.b", "a.b.c.d", "a.!!.c"] {
            assert_eq!(
                unverified_issuer(bad).unwrap_err().reason,
                "malformed token: not a signed JWT"
            );
        }
        let t = format!("{}.{}.sig", enc("{}"), enc(r#"{"sub":"x"}"#));
        assert_eq!(
            unverified_issuer(&t).unwrap_err().reason,
            "token has no iss claim"
        );
    }
}

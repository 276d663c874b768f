//! CEL expressions, as Flux evaluates them for receivers: `resourceFilter`, a resource's
//! `filter`, and a generic-oidc provider's `variables` and `validations`.
//!
//! Flux compiles them again on every request; here each is compiled once, when the
//! configuration loads, so a bad expression stops the load and names its key instead of
//! failing deliveries. The environment has what Flux's has and cel-rust offers: the standard
//! library, optional types, and the strings, lists (for sets) and encoders extensions.

use cel::{extensions, Context, Env, Program};
use std::fmt;
use std::sync::{Arc, LazyLock};

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib().with_optional_support(true);
    // None of these can clash with the standard library, so a failure here is a bug in the
    // crate, and the environment without that extension is still usable.
    let _ = env.add_extension(extensions::strings);
    let _ = env.add_extension(extensions::lists);
    let _ = env.add_extension(extensions::encoders);
    let _ = env.add_extension(extensions::math);
    Arc::new(env)
});

/// The variables an expression may use, by where it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `resourceFilter` and `filter`: `res`, `req`, and `claims` for generic-oidc only.
    Filter { claims: bool },
    /// A generic-oidc provider's `variables` and `validations`: `claims` and the variables
    /// declared before it (as `vars`).
    Claims,
}

/// A compiled expression and the text it came from.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Expr {
    /// Compiles `source`; the error says why, for the configuration key it came from.
    pub fn compile(source: &str, scope: Scope) -> Result<Expr, String> {
        if source.trim().is_empty() {
            return Err("empty expression".into());
        }
        let program = ENV.compile(source).map_err(|e| {
            format!(
                "not a valid CEL expression: {}",
                e.to_string().replace('\n', " ")
            )
        })?;
        let refs = program.references();
        let (allowed, hint): (&[&str], &str) = match scope {
            Scope::Filter { claims: true } => (&["res", "req", "claims"], ""),
            Scope::Filter { claims: false } => (
                &["res", "req"],
                "; claims exists only for type generic-oidc",
            ),
            Scope::Claims => (&["claims", "vars"], ""),
        };
        for known in ["res", "req", "claims", "vars"] {
            if refs.has_variable(known) && !allowed.contains(&known) {
                return Err(format!(
                    "uses {known}, which is not defined here (variables: {}){hint}",
                    allowed.join(", ")
                ));
            }
        }
        Ok(Expr {
            source: source.into(),
            program: Arc::new(program),
        })
    }

    /// Whether the expression reads the request body, so the body must be kept for it.
    pub fn reads_req(&self) -> bool {
        self.program.references().has_variable("req")
    }

    /// Whether the expression reads the verified token's claims.
    pub fn reads_claims(&self) -> bool {
        self.program.references().has_variable("claims")
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates with the given variables, each a JSON value as Flux passes them
    /// (`google.protobuf.Struct`).
    pub fn eval(&self, vars: &[(&str, &serde_json::Value)]) -> Result<serde_json::Value, String> {
        let mut ctx = Context::with_env(ENV.clone());
        for (name, v) in vars {
            let v = cel::to_value(v).map_err(|e| format!("cannot pass {name}: {e}"))?;
            ctx.add_variable_from_value(*name, v);
        }
        let out = self
            .program
            .execute(&ctx)
            .map_err(|e| format!("evaluating {:?}: {e}", self.source))?;
        out.json()
            .map_err(|e| format!("evaluating {:?}: result {e}", self.source))
    }

    /// Evaluates an expression that must give a bool, as a filter or validation must.
    pub fn eval_bool(&self, vars: &[(&str, &serde_json::Value)]) -> Result<bool, String> {
        match self.eval(vars)? {
            serde_json::Value::Bool(b) => Ok(b),
            other => Err(format!(
                "{:?} must evaluate to a bool, not {}",
                self.source,
                kind(&other)
            )),
        }
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a map",
    }
}

// Expressions are shared by the configuration and the relay's worker threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Expr>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filters_see_res_and_req() {
        let e = Expr::compile(
            "res.metadata.name == 'app' && req.ref.startsWith('refs/heads/')",
            Scope::Filter { claims: false },
        )
        .unwrap();
        let res = json!({"metadata": {"name": "app", "labels": {}}});
        let req = json!({"ref": "refs/heads/main"});
        assert!(e.eval_bool(&[("res", &res), ("req", &req)]).unwrap());
        let req = json!({"ref": "refs/tags/v1"});
        assert!(!e.eval_bool(&[("res", &res), ("req", &req)]).unwrap());
    }

    #[test]
    fn extensions_are_there() {
        let e = Expr::compile(
            "'A,B'.lowerAscii().split(',').size() == 2",
            Scope::Filter { claims: false },
        )
        .unwrap();
        assert!(e.eval_bool(&[]).unwrap());
    }

    #[test]
    fn bad_expressions_say_why() {
        let f = Scope::Filter { claims: false };
        assert!(Expr::compile("res.metadata.name ==", f)
            .unwrap_err()
            .starts_with("not a valid CEL expression"));
        assert!(Expr::compile("claims.sub == 'x'", f)
            .unwrap_err()
            .contains("generic-oidc"));
        assert!(Expr::compile("claims.sub == 'x'", Scope::Filter { claims: true }).is_ok());
        assert_eq!(Expr::compile(" ", f).unwrap_err(), "empty expression");
        let e = Expr::compile("res.metadata.name", f).unwrap();
        let res = json!({"metadata": {"name": "app"}});
        assert!(e
            .eval_bool(&[("res", &res)])
            .unwrap_err()
            .contains("must evaluate to a bool"));
        let e = Expr::compile("req.missing == 'x'", f).unwrap();
        assert!(e.eval_bool(&[("req", &json!({}))]).is_err());
    }
}

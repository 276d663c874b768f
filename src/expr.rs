//! CEL expressions, as Flux evaluates them for receivers: `resourceFilter`, a resource's
//! `filter`, and a generic-oidc provider's `variables` and `validations`.
//!
//! Flux compiles them again on every request; here each is compiled once, when the
//! configuration loads, so a bad expression stops the load and names its key instead of
//! failing deliveries. The environment is Flux's ([`library`]), and the load-time check
//! ([`check`]) refuses what Flux's type checker refuses: undeclared names, unknown functions,
//! and a filter or validation that cannot yield a bool.

mod check;
mod library;

use cel::{Context, Env, Program};
use library::{Ty, ENV};
use std::fmt;
use std::sync::{Arc, LazyLock};

/// Parses expressions as written, macros unexpanded, for the load-time check.
static AS_WRITTEN: LazyLock<Env> = LazyLock::new(Env::default);

/// Every variable of every scope.
const VARIABLES: [&str; 4] = ["res", "req", "claims", "vars"];

/// The variables an expression may use, by where it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `resourceFilter` and `filter`: `res`, `req`, and `claims` for generic-oidc only.
    Filter { claims: bool },
    /// A generic-oidc provider's `validations`: `claims` and the provider's variables (as
    /// `vars`).
    Claims,
    /// A generic-oidc provider's `variables`: as `Claims`, but any value, not only a bool.
    Variable,
}

impl Scope {
    /// The variables the expression may use, and a hint for those it may not.
    fn variables(self) -> (&'static [&'static str], &'static str) {
        match self {
            Scope::Filter { claims: true } => (&["res", "req", "claims"], ""),
            Scope::Filter { claims: false } => (
                &["res", "req"],
                "; claims exists only for type generic-oidc",
            ),
            Scope::Claims | Scope::Variable => (&["claims", "vars"], ""),
        }
    }
}

/// A compiled expression and the text it came from.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
    /// The configuration key it came from, to say which expression turned an object down.
    key: Option<Arc<str>>,
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
        let syntax = |e: cel::ParseErrors| {
            format!(
                "not a valid CEL expression: {}",
                e.to_string().replace('\n', " ")
            )
        };
        let program = ENV.compile(source).map_err(syntax)?;
        let written = AS_WRITTEN.parser().parse(source).map_err(syntax)?;
        let (allowed, hint) = scope.variables();
        let elsewhere = |name: &str| {
            VARIABLES.contains(&name).then(|| {
                format!(
                    "uses {name}, which is not defined here (variables: {}){hint}",
                    allowed.join(", ")
                )
            })
        };
        let ty = check::Checker::new(allowed, &elsewhere).check(&written)?;
        if scope != Scope::Variable {
            if ty != Ty::Bool && ty != Ty::Dyn {
                return Err(format!(
                    "the expression yields {}, not a bool",
                    ty.describe()
                ));
            }
            if ty == Ty::Dyn && check::is_variable_data(&written) {
                return Err("the expression yields a field of its input, whose type (dyn) is known only at evaluation, not a bool; Flux refuses it too: compare it, as `… == true`".into());
            }
        }
        Ok(Expr {
            source: source.into(),
            program: Arc::new(program),
            key: None,
        })
    }

    /// The same expression, known by its configuration key.
    pub fn named(mut self, key: String) -> Expr {
        self.key = Some(key.into());
        self
    }

    /// `key = source` (or the source alone when the key is unknown, as for a job resumed
    /// from disk): configuration, not a secret, so it may be shown.
    pub fn describe(&self) -> String {
        match &self.key {
            Some(k) => format!("{k} = {}", self.source),
            None => self.source.to_string(),
        }
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
            ctx.add_variable_from_value(*name, to_cel(v));
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

/// A JSON value as Flux passes it: a `google.protobuf.Struct`, whose numbers are all doubles
/// (so `type(req.count) == double`, and `req.count * 1.5` works as in Flux). serde_json's
/// parser nests at most 128 levels, which bounds the recursion.
fn to_cel(v: &serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match v {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => cel::Value::from(s.as_str()),
        J::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        J::Object(m) => cel::Value::Map(
            m.iter()
                .map(|(k, v)| (k.clone(), to_cel(v)))
                .collect::<std::collections::HashMap<_, _>>()
                .into(),
        ),
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

    const F: Scope = Scope::Filter { claims: false };

    fn holds(src: &str, vars: &[(&str, &serde_json::Value)]) -> bool {
        Expr::compile(src, Scope::Filter { claims: true })
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .eval_bool(vars)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    fn refused(src: &str, scope: Scope) -> String {
        match Expr::compile(src, scope) {
            Ok(_) => panic!("{src} compiled"),
            Err(e) => e,
        }
    }

    /// The examples of Flux's Receiver documentation (docs/spec/v1/receivers.md).
    #[test]
    fn fluxs_documented_examples() {
        let res = json!({"metadata": {"name": "app", "labels": {"environment": "production"},
                         "annotations": {"update-image": "app", "source-repository": "org/app"}}});
        let req = json!({"tag": "europe-docker.pkg.dev/proj/repo/app:v1.2"});
        let claims = json!({"repository": "org/app", "repository_owner": "my-org",
                            "ref": "refs/heads/main", "environment": "production"});
        let vars = [("res", &res), ("req", &req), ("claims", &claims)];
        for src in [
            "req.tag.contains(res.metadata.name)",
            "has(res.metadata.annotations) && req.tag.split('/').last().value().split(\":\").first().value() == res.metadata.annotations['update-image']",
            "claims.repository == res.metadata.annotations['source-repository']",
            "res.metadata.labels['environment'] == 'production'",
        ] {
            assert!(holds(src, &vars), "{src}");
        }
        // The example: the last path segment of the tag.
        assert!(holds(
            "req.tag.split('/').last().value() == 'app:v1.2'",
            &vars
        ));

        // generic-oidc variables, then validations over them.
        let owner = Expr::compile("claims.repository_owner", Scope::Variable).unwrap();
        let owner = owner.eval(&[("claims", &claims)]).unwrap();
        let list = Expr::compile(
            "[vars.owner + '/repo-a', vars.owner + '/repo-b']",
            Scope::Variable,
        )
        .unwrap();
        let v = json!({"owner": owner});
        let allowed = list.eval(&[("claims", &claims), ("vars", &v)]).unwrap();
        assert_eq!(allowed, json!(["my-org/repo-a", "my-org/repo-b"]));
        let v = json!({"owner": "my-org", "allowedRepos": allowed});
        for (src, want) in [
            ("vars.owner == 'my-org'", true),
            ("claims.repository in vars.allowedRepos", false),
            (
                "claims.ref == 'refs/heads/main' && claims.environment == 'production'",
                true,
            ),
        ] {
            let e = Expr::compile(src, Scope::Claims).unwrap();
            assert_eq!(
                e.eval_bool(&[("claims", &claims), ("vars", &v)]).unwrap(),
                want,
                "{src}"
            );
        }
    }

    /// Each function and macro of Flux's environment, with cel-go's result.
    #[test]
    fn every_function_gives_cel_gos_result() {
        let req = json!({"count": 2, "tags": ["a", "b"], "empty": []});
        for src in [
            // standard library
            "size('abc') == 3 && 'abc'.size() == 3 && size([1]) == 1 && size({'a': 1}) == 1",
            "'abc'.contains('b') && 'abc'.startsWith('ab') && 'abc'.endsWith('bc')",
            "'abc'.matches('^a.c$') && matches('abc', 'b')",
            "bool('true') && bytes('a') == b'a' && double('1.5') == 1.5 && int('2') == 2",
            "uint(2) == 2u && string(1) == '1' && dyn(1) == 1 && type(1) == int",
            "duration('1h').getMinutes() == 60 && timestamp('2024-03-05T06:07:08.009Z').getFullYear() == 2024",
            "timestamp('2024-03-05T06:07:08.009Z').getMonth() == 2",
            "timestamp('2024-03-05T06:07:08.009Z').getDate() == 5",
            "timestamp('2024-03-05T06:07:08.009Z').getDayOfMonth() == 4",
            "timestamp('2024-03-05T06:07:08.009Z').getDayOfWeek() == 2",
            "timestamp('2024-03-05T06:07:08.009Z').getDayOfYear() == 64",
            "timestamp('2024-03-05T06:07:08.009Z').getHours() == 6",
            "timestamp('2024-03-05T06:07:08.009Z').getMinutes() == 7",
            "timestamp('2024-03-05T06:07:08.009Z').getSeconds() == 8",
            "timestamp('2024-03-05T06:07:08.009Z').getMilliseconds() == 9",
            "timestamp('2024-03-05T06:07:08Z').getHours('+01:00') == 7",
            // macros
            "has(req.count) && !has(req.nope)",
            "req.tags.all(t, t.size() == 1) && req.tags.exists(t, t == 'b')",
            "req.tags.exists_one(t, t == 'a') && req.tags.map(t, t + '!') == ['a!', 'b!']",
            "req.tags.map(t, t != 'a', t) == ['b'] && req.tags.filter(t, t == 'a') == ['a']",
            "{'a': 1}.exists(k, k == 'a')",
            // numbers are doubles, as in a google.protobuf.Struct, compared across types
            "req.count == 2 && req.count > 1 && req.count < 2.5 && type(req.count) == double",
            "req.count * 1.5 == 3.0 && int(req.count) + 1 == 3",
            // optionals
            "optional.of(1).hasValue() && !optional.none().hasValue() && optional.of(1).value() == 1",
            "!optional.ofNonZeroValue('').hasValue() && optional.ofNonZeroValue('a').hasValue()",
            "optional.none().or(optional.of(2)).value() == 2 && optional.none().orValue(3) == 3",
            "req.?nope.orValue('x') == 'x' && req.?count.hasValue() && {'a': 1}[?'a'].value() == 1",
            "[1, 2, 3].first().value() == 1 && [1, 2, 3].last().value() == 3",
            "!req.empty.first().hasValue() && !req.empty.last().hasValue()",
            "req.tags.last() == optional.of('b') && [].first() == optional.none()",
            "optional.unwrap([optional.of(1), optional.none(), optional.of(2)]) == [1, 2]",
            "[optional.none(), optional.of('a')].unwrapOpt() == ['a']",
            "optional.of(2).optMap(x, x * 2).value() == 4",
            "optional.of({'k': 1}).optFlatMap(m, m.?k).value() == 1",
            "[?optional.none(), ?optional.of(1)] == [1]",
            // strings
            "'abc'.charAt(1) == 'b' && 'abcb'.indexOf('b') == 1 && 'abcb'.indexOf('b', 2) == 3",
            "'abcb'.lastIndexOf('b') == 3 && 'abcb'.lastIndexOf('b', 2) == 1",
            "'AbC'.lowerAscii() == 'abc' && 'aBc'.upperAscii() == 'ABC' && '  a '.trim() == 'a'",
            "'aaa'.replace('a', 'b') == 'bbb' && 'aaa'.replace('a', 'b', 2) == 'bba'",
            "'a/b/c'.split('/') == ['a', 'b', 'c'] && 'a/b/c'.split('/', 2) == ['a', 'b/c']",
            "'abc'.substring(1) == 'bc' && 'abc'.substring(1, 2) == 'b'",
            "['a', 'b'].join() == 'ab' && ['a', 'b'].join('-') == 'a-b'",
            "'%s is %d'.format([dyn('x'), 1]) == 'x is 1' && strings.quote('a\"b') == '\"a\\\\\"b\"'",
            "'abc'.reverse() == 'cba'",
            // sets
            "sets.contains([1, 2, 3], [2, 1]) && !sets.contains([1], [2]) && sets.contains([1], [1.0])",
            "sets.equivalent([1, 2, 2], [2, 1]) && !sets.equivalent([1], [1, 2])",
            "sets.intersects([1, 2], [2, 3]) && !sets.intersects([1], [])",
            // encoders
            "base64.encode(b'hello') == 'aGVsbG8=' && base64.decode('aGVsbG8=') == b'hello'",
            // cel-go keeps the last of repeated keys
            "{'a': 1, 'a': 2}['a'] == 2",
        ] {
            assert!(holds(src, &[("req", &req)]), "{src}");
        }
    }

    /// The table the load-time check and the README list is what the environment has.
    #[test]
    fn every_function_is_in_the_environment() {
        use cel::ExecutionError::UndeclaredReference;
        for f in library::FUNCTIONS {
            let src = match f.style {
                library::Style::Member => format!("null.{}()", f.name),
                _ => format!("{}()", f.name),
            };
            let out = ENV
                .compile(&src)
                .unwrap()
                .execute(&Context::with_env(ENV.clone()));
            assert!(
                !matches!(out, Err(UndeclaredReference(_))),
                "{src}: {out:?}"
            );
        }
        // Flux has neither cel-rust's lists nor its math extension.
        let out = ENV.compile("[1].distinct()").unwrap();
        assert!(out.execute(&Context::with_env(ENV.clone())).is_err());
    }

    /// The README's list of functions is the environment's.
    #[test]
    fn the_readme_lists_every_function() {
        let readme = include_str!("../README.md");
        let start = readme.find("### CEL expressions").unwrap();
        let section = &readme[start..start + readme[start..].find("\n## ").unwrap()];
        for f in library::FUNCTIONS {
            assert!(section.contains(&format!("`{}`", f.name)), "{}", f.name);
        }
    }

    #[test]
    fn expressions_are_checked_at_load() {
        let cases: &[(&str, Scope, &str)] = &[
            ("'test'", F, "the expression yields a string, not a bool"),
            ("1 + 2", F, "the expression yields an int, not a bool"),
            ("req.a + 1", F, "the expression yields an int, not a bool"),
            ("req.tag.split('/')", F, "the expression yields a list, not a bool"),
            ("req.tags.last()", F, "the expression yields an optional, not a bool"),
            ("req.a.size()", F, "the expression yields an int, not a bool"),
            ("req", F, "the expression yields a map, not a bool"),
            ("req.flag", F, "the expression yields a field of its input"),
            ("res.metadata.labels['x']", F, "the expression yields a field of its input"),
            ("requrest.body.value == 'x'", F, "undeclared reference to 'requrest'"),
            ("req.tags.exists(t, x == t)", F, "undeclared reference to 'x'"),
            ("req.tags.exists(t, t == 'a') && t == 'a'", F, "undeclared reference to 't'"),
            ("req.tag.lst().value() == 'x'", F, "undeclared reference to 'lst'"),
            ("lst(req.tags) == 'x'", F, "undeclared reference to 'lst'"),
            ("req.tags.sortBy(t, t) == []", F, "undeclared reference to 'sortBy'"),
            ("math.abs(-1) == 1", F, "undeclared reference to 'math.abs'"),
            ("cel.bind(x, 1, x == 1)", F, "undeclared reference to 'cel.bind'"),
            ("req.tags.existsOne(t, t == 'a')", F, "unknown function 'existsOne'"),
            ("startsWith(req.tag, 'a')", F, "'startsWith' is called on a value"),
            ("[1, 'a'] == req.x", F, "a list literal mixes an int and a string"),
            ("{'a': 1, 'b': 'c'} == req.x", F, "a map's values literal mixes"),
            ("claims.sub == 'x'", F, "uses claims, which is not defined here (variables: res, req); claims exists only for type generic-oidc"),
            ("req.x == 'y'", Scope::Claims, "uses req, which is not defined here (variables: claims, vars)"),
            ("claims.sub", Scope::Claims, "the expression yields a field of its input"),
            ("'x'", Scope::Claims, "the expression yields a string, not a bool"),
            ("x.y == 1", Scope::Variable, "undeclared reference to 'x'"),
            ("reqq.tag.size() > 1", F, "undeclared reference to 'reqq'"),
        ];
        for (src, scope, want) in cases {
            let got = refused(src, *scope);
            assert!(got.contains(want), "{src}: {got:?}, want {want:?}");
        }
        // What may yield a bool, and what a variable may be, loads.
        for (src, scope) in [
            ("req.flag == true", F),
            ("req.a ? true : false", F),
            ("optional.of(true).value()", F),
            ("req.?flag.orValue(false)", F),
            ("[1, dyn('a')].size() == 2", F),
            (
                "type(req.a) == string && type(req.b) == google.protobuf.Timestamp",
                F,
            ),
            ("[req.a, req.b].all(x, x.exists(y, y == 'z'))", F),
            ("'test'", Scope::Variable),
            ("claims.sub", Scope::Variable),
            ("req.tags.map(t, t.size())[0] > 1", F),
        ] {
            Expr::compile(src, scope).unwrap_or_else(|e| panic!("{src}: {e}"));
        }
    }

    #[test]
    fn json_numbers_are_doubles_as_in_a_protobuf_struct() {
        let e = Expr::compile("claims.n", Scope::Variable).unwrap();
        assert_eq!(e.eval(&[("claims", &json!({"n": 1}))]).unwrap(), json!(1.0));
        // Flux has no int + double: the same error here.
        let e = Expr::compile("req.n + 1 == 2", F).unwrap();
        assert!(e.eval_bool(&[("req", &json!({"n": 1}))]).is_err());
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
        assert!(Expr::compile("res.metadata.name == 'x' &&", f).is_err());
        assert!(Expr::compile("claims.sub == 'x'", Scope::Filter { claims: true }).is_ok());
        assert_eq!(Expr::compile(" ", f).unwrap_err(), "empty expression");
        let e = Expr::compile("dyn(res.metadata.name)", f).unwrap();
        let res = json!({"metadata": {"name": "app"}});
        assert!(e
            .eval_bool(&[("res", &res)])
            .unwrap_err()
            .contains("must evaluate to a bool"));
        let e = Expr::compile("req.missing == 'x'", f).unwrap();
        assert!(e.eval_bool(&[("req", &json!({}))]).is_err());
    }
}

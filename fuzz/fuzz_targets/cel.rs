//! CEL: any expression compiled as a filter, then evaluated against any JSON as `req`, a
//! fixed object as `res`, and claims.
#![no_main]

use fluxgate::expr::{Expr, Scope};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // "expression\0json"
    let (source, input) = text.split_once('\0').unwrap_or((text, "{}"));
    let Ok(expr) = Expr::compile(source, Scope::Filter { claims: true }) else {
        return;
    };
    let req: Value = serde_json::from_str(input).unwrap_or(json!({}));
    let res = json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
                     "metadata": {"name": "app", "namespace": "flux-system",
                                  "labels": {"app": "web"}, "annotations": {}}});
    let claims = json!({"sub": "repo:org/app:ref:refs/heads/main", "aud": "flux"});
    let _ = expr.eval_bool(&[("res", &res), ("req", &req), ("claims", &claims)]);
});

//! The load-time check cel-go's type checker does for Flux, as far as it can be done without
//! one (cel-rust has none): every name is declared, every function exists, and a filter or
//! validation can yield a bool.
//!
//! It walks the expression as written, before macros expand, so a macro's variable (`x` in
//! `list.exists(x, …)`) is bound exactly where the macro binds it, and a macro Flux lacks is an
//! unknown function. Types are what the expression shows of them: a literal, an operator, a
//! function's result. A field of a variable is `dyn`, as in Flux, where the variables are
//! `google.protobuf.Struct`.

use super::library::{function, Style, Ty, MACROS};
use cel::common::ast::{operators, CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};

/// The type names an expression may use as values, as in `type(x) == string`.
const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
    "optional_type",
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
];

pub(super) struct Checker<'a> {
    /// The variables of the expression's scope.
    pub declared: &'a [&'a str],
    /// Variables of other scopes, for a better message than "undeclared".
    pub elsewhere: &'a dyn Fn(&str) -> Option<String>,
    /// The macro variables in scope, innermost last.
    bound: Vec<String>,
}

impl<'a> Checker<'a> {
    pub(super) fn new(
        declared: &'a [&'a str],
        elsewhere: &'a dyn Fn(&str) -> Option<String>,
    ) -> Self {
        Checker {
            declared,
            elsewhere,
            bound: Vec::new(),
        }
    }

    /// The expression's type, or why it cannot run in Flux's environment.
    pub(super) fn check(&mut self, e: &IdedExpr) -> Result<Ty, String> {
        match &e.expr {
            Expr::Literal(l) => Ok(literal(l)),
            Expr::Ident(name) => self.ident(name),
            Expr::Select(s) => {
                if let Some(name) = qualified(e) {
                    if TYPE_NAMES.contains(&name.as_str()) {
                        return Ok(Ty::Type);
                    }
                }
                self.check(&s.operand)?;
                Ok(if s.test { Ty::Bool } else { Ty::Dyn })
            }
            Expr::Call(c) => self.call(c),
            Expr::List(l) => {
                let mut types = Vec::new();
                for (i, el) in l.elements.iter().enumerate() {
                    let t = self.check(el)?;
                    // `[?x]` adds x's value: its type is not that of the optional.
                    if !l.optional_indices.contains(&i) {
                        types.push(t);
                    }
                }
                homogeneous("list", &types)?;
                Ok(Ty::List)
            }
            Expr::Map(m) => {
                let (mut keys, mut values) = (Vec::new(), Vec::new());
                for entry in &m.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(me) => {
                            keys.push(self.check(&me.key)?);
                            let v = self.check(&me.value)?;
                            if !me.optional {
                                values.push(v);
                            }
                        }
                        EntryExpr::StructField(_) => {
                            return Err("a struct field in a map literal".into())
                        }
                    }
                }
                homogeneous("map's keys", &keys)?;
                homogeneous("map's values", &values)?;
                Ok(Ty::Map)
            }
            Expr::Struct(s) => Err(format!(
                "undeclared reference to '{}': Flux's environment declares no message types",
                s.type_name
            )),
            Expr::Comprehension(c) => {
                // Not in an expression as written; checked as it stands all the same.
                self.check(&c.iter_range)?;
                let accu = self.check(&c.accu_init)?;
                self.bound.push(c.accu_var.clone());
                self.bound.push(c.iter_var.clone());
                if let Some(v) = &c.iter_var2 {
                    self.bound.push(v.clone());
                }
                let out = (|| {
                    self.check(&c.loop_cond)?;
                    self.check(&c.loop_step)?;
                    self.check(&c.result)
                })();
                self.bound
                    .truncate(self.bound.len() - 2 - usize::from(c.iter_var2.is_some()));
                out.map(|t| if t == Ty::Dyn { accu } else { t })
            }
            Expr::Unspecified => Err("an incomplete expression".into()),
        }
    }

    fn ident(&self, name: &str) -> Result<Ty, String> {
        if self.bound.iter().any(|b| b == name) {
            Ok(Ty::Dyn)
        } else if self.declared.contains(&name) {
            Ok(Ty::Map)
        } else if TYPE_NAMES.contains(&name) {
            Ok(Ty::Type)
        } else if let Some(why) = (self.elsewhere)(name) {
            Err(why)
        } else {
            Err(format!("undeclared reference to '{name}'"))
        }
    }

    fn call(&mut self, c: &CallExpr) -> Result<Ty, String> {
        if let Some(t) = self.operator(c)? {
            return Ok(t);
        }
        let receiver = c.target.is_some();
        if let Some((_, _, counts)) = MACROS
            .iter()
            .find(|(name, on, _)| *name == c.func_name && *on == receiver)
        {
            if counts.contains(&c.args.len()) {
                return self.macro_call(c);
            }
        }
        // `optional.of(x)`, `sets.contains(a, b)`: a namespaced function, not a member call.
        if let Some(target) = &c.target {
            if let Some(ns) = qualified(target) {
                let root = ns.split('.').next().unwrap_or_default();
                let name = format!("{ns}.{}", c.func_name);
                if !self.bound.iter().any(|b| b == root) && !self.declared.contains(&root) {
                    if let Some(f) = function(&name) {
                        for a in &c.args {
                            self.check(a)?;
                        }
                        return Ok(f.returns);
                    }
                    if !TYPE_NAMES.contains(&ns.as_str()) && (self.elsewhere)(root).is_none() {
                        // `fo.size()` misspells a variable; `math.abs(x)` names a function.
                        let missing = if function(&c.func_name).is_some() {
                            root
                        } else {
                            &name
                        };
                        return Err(format!("undeclared reference to '{missing}'"));
                    }
                }
            }
        }
        // The function first: an unknown one's arguments may use names only it would bind.
        let name = &c.func_name;
        let returns = match function(name) {
            Some(f) if f.style == Style::Both => f.returns,
            Some(f) if (f.style == Style::Member) == receiver => f.returns,
            Some(f) if f.style == Style::Member => {
                return Err(format!(
                    "'{name}' is called on a value, as x.{name}(…), not as {name}(…)"
                ))
            }
            Some(_) => {
                return Err(format!(
                    "'{name}' is called as {name}(…), not on a value as x.{name}(…)"
                ))
            }
            None if name == "existsOne" => {
                return Err(
                    "unknown function 'existsOne': Flux's CEL has the macro exists_one instead"
                        .into(),
                )
            }
            None => return Err(format!("undeclared reference to '{name}'")),
        };
        if let Some(target) = &c.target {
            self.check(target)?;
        }
        for a in &c.args {
            self.check(a)?;
        }
        Ok(returns)
    }

    /// `x.all(v, p)` and the like: `v` is bound in the other arguments.
    fn macro_call(&mut self, c: &CallExpr) -> Result<Ty, String> {
        let name = c.func_name.as_str();
        if name == operators::HAS {
            return match &c.args[0].expr {
                Expr::Select(s) if !s.test => {
                    self.check(&s.operand)?;
                    Ok(Ty::Bool)
                }
                _ => {
                    Err("invalid argument to has(): it takes a field selection, as has(x.f)".into())
                }
            };
        }
        if let Some(t) = &c.target {
            self.check(t)?;
        }
        let Expr::Ident(var) = &c.args[0].expr else {
            return Err(format!(
                "{name}(): its first argument must be a simple name"
            ));
        };
        self.bound.push(var.clone());
        let out = c.args[1..].iter().try_for_each(|a| self.check(a).map(drop));
        self.bound.pop();
        out?;
        Ok(match name {
            "all" | "exists" | "exists_one" => Ty::Bool,
            "map" | "filter" => Ty::List,
            _ => Ty::Optional,
        })
    }

    /// The type of an operator's result, or `None` if `c` is no operator.
    fn operator(&mut self, c: &CallExpr) -> Result<Option<Ty>, String> {
        use operators::*;
        let name = c.func_name.as_str();
        let arithmetic = [ADD, SUBSTRACT, MULTIPLY, DIVIDE, MODULO, NEGATE];
        let boolean = [
            LOGICAL_AND,
            LOGICAL_OR,
            LOGICAL_NOT,
            EQUALS,
            NOT_EQUALS,
            LESS,
            LESS_EQUALS,
            GREATER,
            GREATER_EQUALS,
            IN,
            NOT_STRICTLY_FALSE,
        ];
        if !(arithmetic.contains(&name)
            || boolean.contains(&name)
            || [CONDITIONAL, INDEX, OPT_INDEX, OPT_SELECT].contains(&name))
        {
            return Ok(None);
        }
        let mut args = Vec::new();
        for a in &c.args {
            args.push(self.check(a)?);
        }
        let known = |t: &&Ty| **t != Ty::Dyn;
        Ok(Some(if boolean.contains(&name) {
            Ty::Bool
        } else if arithmetic.contains(&name) {
            match args.as_slice() {
                [Ty::Timestamp, Ty::Timestamp] if name == SUBSTRACT => Ty::Duration,
                [Ty::Timestamp, Ty::Duration] | [Ty::Duration, Ty::Timestamp] => Ty::Timestamp,
                _ => args.iter().find(known).copied().unwrap_or(Ty::Arith),
            }
        } else if name == CONDITIONAL {
            match args.as_slice() {
                [_, a, b] if a == b => *a,
                _ => Ty::Dyn,
            }
        } else if name == INDEX {
            Ty::Dyn
        } else {
            Ty::Optional
        }))
    }
}

/// Flux's environment has `HomogeneousAggregateLiterals`: a literal's elements have one type.
fn homogeneous(what: &str, types: &[Ty]) -> Result<(), String> {
    let mut known = types.iter().filter(|t| !matches!(t, Ty::Dyn | Ty::Arith));
    if let Some(first) = known.next() {
        if let Some(other) = known.find(|t| *t != first) {
            return Err(format!(
                "a {what} literal mixes {} and {}; Flux requires one type (wrap an element in dyn() to mix)",
                first.describe(),
                other.describe()
            ));
        }
    }
    Ok(())
}

fn literal(l: &LiteralValue) -> Ty {
    match l {
        LiteralValue::Boolean(_) => Ty::Bool,
        LiteralValue::Bytes(_) => Ty::Bytes,
        LiteralValue::Double(_) => Ty::Double,
        LiteralValue::Int(_) => Ty::Int,
        LiteralValue::Null => Ty::Null,
        LiteralValue::String(_) => Ty::String,
        LiteralValue::UInt(_) => Ty::Uint,
    }
}

/// The dotted name `e` spells (`a.b.c`), if it is one.
fn qualified(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Select(s) if !s.test => Some(format!("{}.{}", qualified(&s.operand)?, s.field)),
        _ => None,
    }
}

/// Whether the expression's value is a field or element of a variable, or a variable itself:
/// `dyn` in Flux, whose check refuses it where a bool is required.
pub(super) fn is_variable_data(e: &IdedExpr) -> bool {
    match &e.expr {
        Expr::Ident(_) => true,
        Expr::Select(s) => !s.test && is_variable_data(&s.operand),
        Expr::Call(c) if c.func_name == operators::INDEX => {
            c.args.first().is_some_and(is_variable_data)
        }
        _ => false,
    }
}

//! Flux's CEL environment: what fluxcd/pkg `runtime/cel/expression.go` builds for receivers.
//!
//! Flux enables cel-go's standard library, `OptionalTypes()`, `ext.Strings()`, `ext.Sets()`
//! and `ext.Encoders()`, each at its latest version (no version option is passed). cel-rust
//! has the standard library, optionals, strings and encoders; what it lacks of them is added
//! here with cel-go's semantics: the optional library's version 2 functions (`first`, `last`,
//! `optional.unwrap`, `unwrapOpt`) and the sets library. cel-rust's lists and math extensions
//! are left out: Flux has neither, so an expression using them would stop working in Flux.
//!
//! [`FUNCTIONS`] lists every function of that environment with its result type: the load-time
//! check refuses a call to anything else, and the README's list is this table.

use cel::common::functions::Function;
use cel::common::types::{CelList, CelOptional, LIST_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{extensions, Env, ExecutionError};
use std::sync::{Arc, LazyLock};

/// The environment every expression compiles and evaluates in.
pub(super) static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib().with_optional_support(true);
    // cel-go keeps the last of repeated map keys in a literal; cel-rust refuses them by default.
    env.set_error_on_duplicate_map_keys(false);
    // None of these names is in the standard library or the other extensions: a failure is a
    // bug that `every_function_is_in_the_environment` catches.
    let _ = env.add_extension(extensions::strings);
    let _ = env.add_extension(extensions::encoders);
    let _ = env.add_extension(optional_v2);
    let _ = env.add_extension(sets);
    Arc::new(env)
});

/// How a function is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    /// `f(x)`
    Global,
    /// `x.f()`
    Member,
    /// Either.
    Both,
}

/// What the load-time check knows of a value's type. `Dyn` is anything, known only when the
/// expression runs (a field of `res`, `req`, `claims` or `vars` is `Dyn`, as in Flux, where
/// they are `google.protobuf.Struct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    List,
    Map,
    Null,
    Type,
    Duration,
    Timestamp,
    Optional,
    /// The result of arithmetic on operands of unknown types: never a bool.
    Arith,
    Dyn,
}

impl Ty {
    pub(super) fn describe(self) -> &'static str {
        match self {
            Ty::Bool => "a bool",
            Ty::Int => "an int",
            Ty::Uint => "a uint",
            Ty::Double => "a double",
            Ty::String => "a string",
            Ty::Bytes => "bytes",
            Ty::List => "a list",
            Ty::Map => "a map",
            Ty::Null => "null",
            Ty::Type => "a type",
            Ty::Duration => "a duration",
            Ty::Timestamp => "a timestamp",
            Ty::Optional => "an optional",
            Ty::Arith => "the result of arithmetic",
            Ty::Dyn => "a value of a type known only at evaluation",
        }
    }
}

pub(super) struct Func {
    pub name: &'static str,
    pub style: Style,
    pub returns: Ty,
}

const fn f(name: &'static str, style: Style, returns: Ty) -> Func {
    Func {
        name,
        style,
        returns,
    }
}

use Style::{Both, Global, Member};

/// Every function of Flux's environment (operators and macros aside), in the README's order:
/// the standard library, optionals, strings, sets, encoders.
pub(super) const FUNCTIONS: &[Func] = &[
    f("size", Both, Ty::Int),
    f("contains", Member, Ty::Bool),
    f("startsWith", Member, Ty::Bool),
    f("endsWith", Member, Ty::Bool),
    f("matches", Both, Ty::Bool),
    f("bool", Global, Ty::Bool),
    f("bytes", Global, Ty::Bytes),
    f("double", Global, Ty::Double),
    f("duration", Global, Ty::Duration),
    f("dyn", Global, Ty::Dyn),
    f("int", Global, Ty::Int),
    f("string", Global, Ty::String),
    f("timestamp", Global, Ty::Timestamp),
    f("type", Global, Ty::Type),
    f("uint", Global, Ty::Uint),
    f("getDate", Member, Ty::Int),
    f("getDayOfMonth", Member, Ty::Int),
    f("getDayOfWeek", Member, Ty::Int),
    f("getDayOfYear", Member, Ty::Int),
    f("getFullYear", Member, Ty::Int),
    f("getHours", Member, Ty::Int),
    f("getMilliseconds", Member, Ty::Int),
    f("getMinutes", Member, Ty::Int),
    f("getMonth", Member, Ty::Int),
    f("getSeconds", Member, Ty::Int),
    f("optional.of", Global, Ty::Optional),
    f("optional.ofNonZeroValue", Global, Ty::Optional),
    f("optional.none", Global, Ty::Optional),
    f("value", Member, Ty::Dyn),
    f("hasValue", Member, Ty::Bool),
    f("or", Member, Ty::Optional),
    f("orValue", Member, Ty::Dyn),
    f("first", Member, Ty::Optional),
    f("last", Member, Ty::Optional),
    f("optional.unwrap", Global, Ty::List),
    f("unwrapOpt", Member, Ty::List),
    f("charAt", Member, Ty::String),
    f("indexOf", Member, Ty::Int),
    f("lastIndexOf", Member, Ty::Int),
    f("lowerAscii", Member, Ty::String),
    f("upperAscii", Member, Ty::String),
    f("replace", Member, Ty::String),
    f("split", Member, Ty::List),
    f("substring", Member, Ty::String),
    f("trim", Member, Ty::String),
    f("join", Member, Ty::String),
    f("format", Member, Ty::String),
    f("strings.quote", Global, Ty::String),
    f("reverse", Member, Ty::String),
    f("sets.contains", Global, Ty::Bool),
    f("sets.equivalent", Global, Ty::Bool),
    f("sets.intersects", Global, Ty::Bool),
    f("base64.encode", Global, Ty::String),
    f("base64.decode", Global, Ty::Bytes),
];

pub(super) fn function(name: &str) -> Option<&'static Func> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// The macros of Flux's environment: `(name, receiver, argument counts)`. cel-rust also
/// expands `existsOne`, which Flux's does not: the check refuses it.
pub(super) const MACROS: &[(&str, bool, &[usize])] = &[
    ("has", false, &[1]),
    ("all", true, &[2]),
    ("exists", true, &[2]),
    ("exists_one", true, &[2]),
    ("map", true, &[2, 3]),
    ("filter", true, &[2]),
    ("optMap", true, &[2]),
    ("optFlatMap", true, &[2]),
];

/// cel-go's optional library from version 2: `first`, `last`, `optional.unwrap`, `unwrapOpt`.
fn optional_v2(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_member_overload("first", "list_first", LIST_TYPE, vec![], first)?;
    env.add_member_overload("last", "list_last", LIST_TYPE, vec![], last)?;
    env.add_overload(
        "optional.unwrap",
        "optional_unwrap",
        vec![LIST_TYPE],
        unwrap as Function,
    )?;
    env.add_member_overload("unwrapOpt", "optional_unwrapOpt", LIST_TYPE, vec![], unwrap)
}

/// cel-go's `ext.Sets()`.
fn sets(env: &mut Env) -> Result<(), cel::DeclarationError> {
    let two = || vec![LIST_TYPE, LIST_TYPE];
    env.add_overload(
        "sets.contains",
        "list_sets_contains_list",
        two(),
        sets_contains,
    )?;
    env.add_overload(
        "sets.equivalent",
        "list_sets_equivalent_list",
        two(),
        sets_equivalent,
    )?;
    env.add_overload(
        "sets.intersects",
        "list_sets_intersects_list",
        two(),
        sets_intersects,
    )
}

/// The elements of the list argument `i`, cloned.
fn elements<'v>(
    args: &[CowVal<'_, 'v>],
    i: usize,
) -> Result<Vec<Box<dyn Val + 'v>>, ExecutionError> {
    let list = args
        .get(i)
        .ok_or_else(|| ExecutionError::invalid_argument_count(i + 1, args.len()))?;
    let items = list
        .as_ref()
        .as_iterable()
        .ok_or_else(|| ExecutionError::UnexpectedType {
            got: list.as_ref().get_type().name().to_owned(),
            want: "list".to_owned(),
        })?;
    let mut iter = items.iter();
    let mut out = Vec::new();
    while let Some(item) = iter.next() {
        out.push(item.clone_as_boxed());
    }
    Ok(out)
}

fn optional_of<'b, 'v>(item: Option<Box<dyn Val + 'v>>) -> CowVal<'b, 'v> {
    CowVal::owned(match item {
        Some(v) => CelOptional::of(v),
        None => CelOptional::none(),
    })
}

/// `[1, 2, 3].first() == optional.of(1)`, `[].first() == optional.none()`.
fn first<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(optional_of(elements(&args, 0)?.into_iter().next()))
}

/// `[1, 2, 3].last() == optional.of(3)`, `[].last() == optional.none()`.
fn last<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(optional_of(elements(&args, 0)?.pop()))
}

/// The values of a list of optionals, the empty ones left out; an element that is not an
/// optional is an error, as in cel-go.
fn unwrap<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut out: Vec<Box<dyn Val + 'v>> = Vec::new();
    for item in elements(&args, 0)? {
        let opt = item.downcast_ref::<CelOptional>().ok_or_else(|| {
            ExecutionError::function_error(
                "optional.unwrap",
                format!("value {} is not optional", item.get_type().name()),
            )
        })?;
        if let Some(v) = opt.inner() {
            out.push(v.clone_as_boxed());
        }
    }
    Ok(CowVal::owned(CelList::from(out)))
}

/// Whether `list` has an element equal to `v`, with CEL's equality (`1 == 1.0`).
fn has_element(list: &[Box<dyn Val + '_>], v: &dyn Val) -> bool {
    list.iter().any(|e| e.equals(v))
}

fn bool_val<'b, 'v>(b: bool) -> CowVal<'b, 'v> {
    CowVal::owned(cel::common::types::CelBool::from(b))
}

/// Every element of the second list is in the first.
fn sets_contains<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (a, b) = (elements(&args, 0)?, elements(&args, 1)?);
    Ok(bool_val(b.iter().all(|v| has_element(&a, v.as_ref()))))
}

/// Each list contains the other: the same elements, duplicates and order aside.
fn sets_equivalent<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (a, b) = (elements(&args, 0)?, elements(&args, 1)?);
    Ok(bool_val(
        b.iter().all(|v| has_element(&a, v.as_ref()))
            && a.iter().all(|v| has_element(&b, v.as_ref())),
    ))
}

/// The lists have at least one element in common.
fn sets_intersects<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let (a, b) = (elements(&args, 0)?, elements(&args, 1)?);
    Ok(bool_val(b.iter().any(|v| has_element(&a, v.as_ref()))))
}

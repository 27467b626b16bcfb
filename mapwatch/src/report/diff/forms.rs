//! The declaration forms a pre-size rewrites, and what each becomes: `[]T{}`,
//! `make([]T, 0[, c])`, `var x []T`, `[]T(nil)` → `make([]T, 0, N)`; `map[K]V{}`,
//! `make(map[K]V[, c])` → `make(map[K]V, N)`. The type is the source's text, never
//! the report's type name (a generic function's report says go.shape.int64).
use tree_sitter::Node;

use super::EditKind;
use super::locate::{Rewrite, Site};
use super::syntax::{
    GoFile, declaring_statement, field_children, int_literal, line, named_children, quote,
};

/// Which declaration form this is, and its rewrite.
pub(super) fn rewrite(
    file: &GoFile,
    site: &Site<'_>,
    name: &str,
    decl: Node<'_>,
) -> Result<Rewrite, String> {
    let declaring = declaring_statement(decl);
    let at = format!("{name}'s declaration at line {}", line(declaring));
    let (names, value, declared_type) = match decl.kind() {
        "short_var_declaration" => (
            decl.child_by_field_name("left")
                .map(named_children)
                .unwrap_or_default(),
            decl.child_by_field_name("right"),
            None,
        ),
        _ => {
            if declaring
                .named_child(0)
                .is_some_and(|c| c.kind() == "var_spec_list")
            {
                return Err(format!(
                    "{at} is in a var ( … ) group, whose columns gofmt aligns: rewrite it \
                     by hand"
                ));
            }
            (
                field_children(decl, "name"),
                decl.child_by_field_name("value"),
                decl.child_by_field_name("type"),
            )
        }
    };
    if names.len() != 1 {
        return Err(format!(
            "{at} declares {} names at once: split it to pre-size {name}",
            names.len()
        ));
    }
    let value = match value.map(named_children) {
        None => None,
        Some(values) if values.len() == 1 => values.first().copied(),
        Some(_) => return Err(format!("{at} assigns several values at once")),
    };
    let ty = value_type(file, site, &at, value, declared_type)?;
    check_type(file, site, &at, ty)?;
    let made = match site.kind {
        EditKind::Slice => format!("make({}, 0, {})", file.text(ty), site.n),
        EditKind::Map => format!("make({}, {})", file.text(ty), site.n),
    };
    let (range, text) = match (declared_type, value) {
        // `var x []T` and `var x []T = …`: the type moves into the make.
        (Some(declared), _) => (
            declared.start_byte()..value.unwrap_or(declared).end_byte(),
            format!("= {made}"),
        ),
        (None, Some(value)) => (value.byte_range(), made),
        (None, None) => return Err(format!("{at} has neither a type nor a value")),
    };
    Ok(Rewrite {
        line: line(declaring),
        range,
        text,
    })
}

/// The type node to make, from the declared type or the value, once the value is one
/// that a make with a capacity can replace without changing what the variable holds.
fn value_type<'t>(
    file: &GoFile,
    site: &Site<'_>,
    at: &str,
    value: Option<Node<'t>>,
    declared: Option<Node<'t>>,
) -> Result<Node<'t>, String> {
    let is_map = matches!(site.kind, EditKind::Map);
    let Some(value) = value else {
        return match (declared, is_map) {
            (Some(ty), false) => Ok(ty),
            _ => Err(format!(
                "{at} leaves the map nil and it is never made in this function"
            )),
        };
    };
    match value.kind() {
        "composite_literal" => {
            let elements = value
                .child_by_field_name("body")
                .map_or(0, |b| b.named_child_count());
            if elements > 0 {
                let what = if is_map { "entries" } else { "elements" };
                return Err(format!(
                    "{at} starts with {elements} {what} ({}); a make would drop them: \
                     pre-size it by hand",
                    quote(file.text(value))
                ));
            }
            value
                .child_by_field_name("type")
                .or(declared)
                .ok_or_else(|| format!("{at} has a literal with no type"))
        }
        "call_expression"
            if value
                .child_by_field_name("function")
                .is_some_and(|f| f.kind() == "identifier" && file.text(f) == "make") =>
        {
            make_type(file, site, at, value)
        }
        "type_conversion_expression" | "nil" if !is_map => {
            let operand = value.child_by_field_name("operand");
            if operand.is_some_and(|o| o.kind() != "nil") {
                return Err(format!(
                    "{at} converts {}: its value comes from elsewhere",
                    quote(file.text(value))
                ));
            }
            let ty = value.child_by_field_name("type").or(declared);
            let ty = match ty {
                Some(t) if t.kind() == "parenthesized_type" => t.named_child(0),
                other => other,
            };
            ty.ok_or_else(|| format!("{at} is an untyped nil"))
        }
        "type_conversion_expression" | "nil" => Err(format!(
            "{at} leaves the map nil and it is never made in this function"
        )),
        _ => Err(format!(
            "{at} takes its value from {}, not from a make or a literal here",
            quote(file.text(value))
        )),
    }
}

/// `make(T, …)`'s type, when its length and capacity allow a bigger capacity alone.
fn make_type<'t>(
    file: &GoFile,
    site: &Site<'_>,
    at: &str,
    call: Node<'t>,
) -> Result<Node<'t>, String> {
    let args = call
        .child_by_field_name("arguments")
        .map(named_children)
        .unwrap_or_default();
    let Some(&ty) = args.first() else {
        return Err(format!("{at} is a make with no type"));
    };
    let (length, capacity) = match (site.kind, args.len()) {
        (EditKind::Slice, 2 | 3) => (args.get(1).copied(), args.get(2).copied()),
        (EditKind::Map, 1 | 2) => (None, args.get(1).copied()),
        _ => return Err(format!("{at} is a make with {} arguments", args.len())),
    };
    if let Some(length) = length
        && int_literal(file.text(length)) != Some(0)
    {
        return Err(format!(
            "{at} makes length {}, not 0: a length-0 make would change what the slice \
             holds before the appends",
            quote(file.text(length))
        ));
    }
    if let Some(capacity) = capacity {
        match int_literal(file.text(capacity)) {
            Some(c) if c >= site.n => {
                return Err(format!(
                    "{at} already sizes it to {c}, at least the advised {}",
                    site.n
                ));
            }
            Some(_) => {}
            None => {
                return Err(format!(
                    "{at} sizes it to {}, not a number: the capture saw it reach {}; \
                     change that expression by hand",
                    quote(file.text(capacity)),
                    site.n
                ));
            }
        }
    }
    Ok(ty)
}

/// A slice site's declaration must have a slice type, a map site's a map type; named
/// types are taken on trust (the append or insert compiled, so their kind is right).
fn check_type(file: &GoFile, site: &Site<'_>, at: &str, ty: Node<'_>) -> Result<(), String> {
    let ok = match (site.kind, ty.kind()) {
        (_, "type_identifier" | "qualified_type" | "generic_type") => true,
        (EditKind::Slice, kind) => kind == "slice_type",
        (EditKind::Map, kind) => kind == "map_type",
    };
    if ok {
        Ok(())
    } else {
        let wanted = match site.kind {
            EditKind::Slice => "a slice",
            EditKind::Map => "a map",
        };
        Err(format!(
            "{at} has type {}, not {wanted} type",
            quote(file.text(ty))
        ))
    }
}

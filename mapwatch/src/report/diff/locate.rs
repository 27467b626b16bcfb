//! From a flagged line to the declaration that feeds it, and that declaration
//! rewritten with the advised size. Pure: a parsed Go file in, a byte range and its
//! replacement (or the reason there is none) out.
use std::ops::Range;

use tree_sitter::Node;

use super::EditKind;
use super::forms;
use super::syntax::{
    Binding, GoFile, declaring_statement, descendants, field_children, line, named_children,
    outermost_function, quote, resolve,
};

/// The flagged site, as the report names it.
pub(super) struct Site<'a> {
    pub kind: EditKind,
    pub line: u32,
    /// The function as the binary names it (main.handle), for messages.
    pub function: &'a str,
    pub n: u64,
    /// Set when the line grows a slice by calling a function that appends to its
    /// argument and returns it (`tags = addTag(tags, t)`) rather than by an append.
    pub through: Option<Through<'a>>,
}

/// A call that grows its argument: the callee's name as the call writes it (`addTag`
/// for main.addTag, `add` for main.(*T).add) and which argument it grows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Through<'a> {
    pub callee: &'a str,
    pub arg: usize,
}

/// Replace `range` of the file with `text`; the declaration starts on `line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rewrite {
    pub line: u32,
    pub range: Range<usize>,
    pub text: String,
}

pub(super) fn locate(file: &GoFile, site: &Site<'_>) -> Result<Rewrite, String> {
    if site.line == 0 {
        return Err("the report gives line 0".into());
    }
    if site.n == 0 {
        return Err("the advised size is 0".into());
    }
    let target = match site.kind {
        EditKind::Slice => match site.through {
            None => append_target(file, site)?,
            Some(through) => call_target(file, site, through)?,
        },
        EditKind::Map => insert_target(file, site)?,
    };
    if outermost_function(target).is_some_and(|f| f.has_error()) {
        return Err(format!(
            "tree-sitter-go could not parse {} cleanly, so it is left alone",
            site.function
        ));
    }
    let name = variable_name(file, site, target)?;
    let decl = match resolve(file, name, target) {
        Binding::Local(decl) => decl,
        Binding::Param { func } => {
            return Err(format!(
                "{name} is a parameter of {}: the caller's value feeds line {}; pre-size it \
                 where the caller makes it",
                function_name(file, func),
                site.line
            ));
        }
        Binding::Other { what, at } => {
            return Err(format!(
                "{name} is declared by {what} at line {}, not by a make or literal",
                line(at)
            ));
        }
        Binding::Package(spec) => {
            return Err(format!(
                "{name} is a package-level variable (line {}), not local to {}: its value \
                 outlives one call, so it is left alone",
                line(spec),
                site.function
            ));
        }
        Binding::Missing => {
            return Err(format!(
                "{name} is not declared in this file (a package-level variable of another \
                 file?), so it is not local to {}",
                site.function
            ));
        }
    };
    check_other_assignments(file, site, name, decl)?;
    check_trailing_comments(file, decl)?;
    forms::rewrite(file, site, name, decl)
}

/// Nodes spanning the site's line that `keep` accepts: those starting on it if any,
/// else the innermost one spanning it (a multi-line statement).
fn on_line<'t>(
    file: &'t GoFile,
    site: &Site<'_>,
    keep: impl Fn(Node<'t>) -> bool,
) -> Vec<Node<'t>> {
    // Lines count from 1; a report saying line 0 names none.
    let Some(row) = site.line.checked_sub(1) else {
        return Vec::new();
    };
    let row = row as usize;
    let spans = |n: Node<'t>| n.start_position().row <= row && row <= n.end_position().row;
    let found = descendants(file.tree.root_node(), spans, |n| spans(n) && keep(n));
    let starting: Vec<Node<'t>> = found
        .iter()
        .copied()
        .filter(|n| n.start_position().row == row)
        .collect();
    if !starting.is_empty() {
        return starting;
    }
    // Source order puts the innermost of nested spanning nodes last.
    found.last().copied().into_iter().collect()
}

/// The slice the append on the site's line grows (its first argument, re-slicing
/// aside), once the append is known to assign back to it.
fn append_target<'t>(file: &'t GoFile, site: &Site<'_>) -> Result<Node<'t>, String> {
    let calls = on_line(file, site, |n| is_append(file, n));
    let first_args: Vec<(Node<'t>, Node<'t>)> = calls
        .iter()
        .filter_map(|&call| {
            let args = call.child_by_field_name("arguments")?;
            named_children(args).first().map(|&a| (call, unslice(a)))
        })
        .collect();
    let Some(&(call, target)) = first_args.first() else {
        return Err(format!(
            "no append on line {} (has the file changed since the build?)",
            site.line
        ));
    };
    if let Some((_, other)) = first_args
        .iter()
        .find(|(_, a)| file.text(*a) != file.text(target))
    {
        return Err(format!(
            "{} appends on line {} (to {} and {}): cannot tell which one grew",
            first_args.len(),
            site.line,
            quote(file.text(target)),
            quote(file.text(*other))
        ));
    }
    if !assigns_back(file, call, target) {
        return Err(format!(
            "the append on line {} does not assign back to {} (x = append(x, …)), so no \
             one declaration feeds it",
            site.line,
            quote(file.text(target))
        ));
    }
    Ok(target)
}

/// A call of the builtin `append`.
fn is_append(file: &GoFile, node: Node<'_>) -> bool {
    node.kind() == "call_expression"
        && node
            .child_by_field_name("function")
            .is_some_and(|f| f.kind() == "identifier" && file.text(f) == "append")
}

/// When `expr` is the only expression of a list: that list and the statement holding it
/// (`x = expr`, `return expr`).
fn sole_value_of(expr: Node<'_>) -> Option<(Node<'_>, Node<'_>)> {
    let list = expr
        .parent()
        .filter(|list| list.kind() == "expression_list" && list.named_child_count() == 1)?;
    Some((list, list.parent()?))
}

/// Whether `call` is the whole right side of `target = call`.
fn assigns_back(file: &GoFile, call: Node<'_>, target: Node<'_>) -> bool {
    sole_value_of(call).is_some_and(|(list, stmt)| {
        stmt.kind() == "assignment_statement"
            && stmt
                .child_by_field_name("right")
                .is_some_and(|r| r.id() == list.id())
            && stmt
                .child_by_field_name("operator")
                .is_some_and(|op| file.text(op) == "=")
            && stmt.child_by_field_name("left").is_some_and(|left| {
                left.named_child_count() == 1 && file.text(left) == file.text(target)
            })
    })
}

/// Whether `call` calls `callee`, as `callee(…)` or `x.callee(…)`.
fn calls(file: &GoFile, call: Node<'_>, callee: &str) -> bool {
    call.kind() == "call_expression"
        && call
            .child_by_field_name("function")
            .is_some_and(|f| match f.kind() {
                "identifier" => file.text(f) == callee,
                "selector_expression" => f
                    .child_by_field_name("field")
                    .is_some_and(|field| file.text(field) == callee),
                _ => false,
            })
}

/// The slice a call of a growing function on the site's line grows (its argument
/// `through.arg`), once the call is known to assign back to it.
fn call_target<'t>(
    file: &'t GoFile,
    site: &Site<'_>,
    through: Through<'_>,
) -> Result<Node<'t>, String> {
    let found = on_line(file, site, |n| calls(file, n, through.callee));
    let args: Vec<(Node<'t>, Node<'t>)> = found
        .iter()
        .filter_map(|&call| {
            let args = call.child_by_field_name("arguments")?;
            named_children(args)
                .get(through.arg)
                .map(|&a| (call, unslice(a)))
        })
        .collect();
    let Some(&(call, target)) = args.first() else {
        return Err(format!(
            "no call of {} on line {} (has the file changed since the build?)",
            through.callee, site.line
        ));
    };
    if args.len() > 1 {
        return Err(format!(
            "{} calls of {} on line {}: cannot tell which one grew",
            args.len(),
            through.callee,
            site.line
        ));
    }
    if !assigns_back(file, call, target) {
        return Err(format!(
            "the call of {} on line {} does not assign back to {} (x = {}(x, …)), so no \
             one declaration feeds it",
            through.callee,
            site.line,
            quote(file.text(target)),
            through.callee
        ));
    }
    Ok(target)
}

/// When the site's line is `return append(p, …)` with p a parameter of its function:
/// p's position among the parameters. The caller's variable is then what grows.
pub(super) fn grown_parameter(file: &GoFile, site: &Site<'_>) -> Option<usize> {
    let [call] = on_line(file, site, |n| is_append(file, n))[..] else {
        return None;
    };
    let returned = sole_value_of(call).is_some_and(|(_, stmt)| stmt.kind() == "return_statement");
    let target = unslice(call.child_by_field_name("arguments")?.named_child(0)?);
    if !returned || target.kind() != "identifier" {
        return None;
    }
    let name = file.text(target);
    let Binding::Param { func } = resolve(file, name, target) else {
        return None;
    };
    let mut index = 0;
    for param in named_children(func.child_by_field_name("parameters")?) {
        if param.kind() != "parameter_declaration" {
            return None; // variadic: the caller's arguments are not one variable
        }
        for param_name in field_children(param, "name") {
            if file.text(param_name) == name {
                return Some(index);
            }
            index += 1;
        }
    }
    None
}

/// `x` of `x[i:j]` (and of `x[i:][:j]`): `x = append(x[:0], …)` reuses x's array, so
/// x's declaration still feeds it.
fn unslice(mut expr: Node<'_>) -> Node<'_> {
    while expr.kind() == "slice_expression" {
        match expr.child_by_field_name("operand") {
            Some(operand) => expr = operand,
            None => break,
        }
    }
    expr
}

/// The map operand of the insert (`m[k] = v`, `m[k] += v`, `m[k]++`) on the line.
fn insert_target<'t>(file: &'t GoFile, site: &Site<'_>) -> Result<Node<'t>, String> {
    let is_insert = |n: Node<'t>| match n.kind() {
        "assignment_statement" => n.child_by_field_name("left").is_some_and(|l| {
            named_children(l)
                .iter()
                .any(|e| e.kind() == "index_expression")
        }),
        "inc_statement" | "dec_statement" => n
            .named_child(0)
            .is_some_and(|e| e.kind() == "index_expression"),
        _ => false,
    };
    let statements = on_line(file, site, is_insert);
    let operands: Vec<Node<'t>> = statements
        .iter()
        .flat_map(|&stmt| match stmt.kind() {
            "assignment_statement" => stmt
                .child_by_field_name("left")
                .map(named_children)
                .unwrap_or_default(),
            _ => stmt.named_child(0).into_iter().collect(),
        })
        .filter(|e| e.kind() == "index_expression")
        .filter_map(|e| e.child_by_field_name("operand"))
        .collect();
    let Some(&target) = operands.first() else {
        return Err(format!(
            "no map insert (m[k] = v, m[k]++) on line {} (has the file changed since the \
             build?)",
            site.line
        ));
    };
    if let Some(other) = operands
        .iter()
        .find(|o| file.text(**o) != file.text(target))
    {
        return Err(format!(
            "inserts into {} and {} on line {}: cannot tell which one grew",
            quote(file.text(target)),
            quote(file.text(*other)),
            site.line
        ));
    }
    Ok(target)
}

/// The variable a target expression names, or why it isn't one.
fn variable_name<'t>(
    file: &'t GoFile,
    site: &Site<'_>,
    target: Node<'t>,
) -> Result<&'t str, String> {
    let what = match site.kind {
        EditKind::Slice => "appends to",
        EditKind::Map => "inserts into",
    };
    match target.kind() {
        "identifier" => Ok(file.text(target)),
        "selector_expression" => {
            let owner = target
                .child_by_field_name("operand")
                .map_or("", |o| file.text(o));
            Err(format!(
                "line {} {what} the field {}: it is declared in a struct type, not here; \
                 pre-size it where the {} value is built",
                site.line,
                quote(file.text(target)),
                owner
            ))
        }
        "index_expression" => Err(format!(
            "line {} {what} {}, an element of another map or slice, which has no \
             declaration of its own",
            site.line,
            quote(file.text(target))
        )),
        _ => Err(format!(
            "line {} {what} {}, not a variable",
            site.line,
            quote(file.text(target))
        )),
    }
}

fn function_name(file: &GoFile, func: Node<'_>) -> String {
    match func.child_by_field_name("name") {
        Some(name) if func.kind() != "func_literal" => file.text(name).to_string(),
        _ => format!("the closure at line {}", line(func)),
    }
}

/// Refuses when the variable gets a value other than its declaration's, anywhere it is
/// visible: then the declaration may not be what feeds the site. Appending to itself
/// and re-slicing itself (`x = x[:0]`) keep its array, so they don't count.
fn check_other_assignments(
    file: &GoFile,
    site: &Site<'_>,
    name: &str,
    decl: Node<'_>,
) -> Result<(), String> {
    let declaring = declaring_statement(decl);
    let Some(scope) = outermost_function(decl) else {
        return Ok(());
    };
    let statements = descendants(
        scope,
        |_| true,
        |n| n.kind() == "assignment_statement" || n.kind() == "short_var_declaration",
    );
    for stmt in statements {
        if stmt.id() == declaring.id() {
            continue;
        }
        let (Some(left), Some(right)) = (
            stmt.child_by_field_name("left"),
            stmt.child_by_field_name("right"),
        ) else {
            continue;
        };
        let lefts = named_children(left);
        let rights = named_children(right);
        for (i, target) in lefts.iter().enumerate() {
            if target.kind() != "identifier" || file.text(*target) != name {
                continue;
            }
            if stmt.kind() == "short_var_declaration" {
                // `:=` only reassigns a name already declared in the same block.
                if stmt.parent().map(|p| p.id()) == declaring.parent().map(|p| p.id())
                    && stmt.start_byte() > declaring.start_byte()
                {
                    return Err(format!(
                        "{name} is declared 2 times in {} (lines {} and {}): cannot tell \
                         which one feeds line {}",
                        site.function,
                        line(declaring),
                        line(stmt),
                        site.line
                    ));
                }
                continue;
            }
            if !matches!(resolve(file, name, *target), Binding::Local(d) if d.id() == decl.id()) {
                continue;
            }
            let value = (lefts.len() == rights.len())
                .then(|| rights.get(i))
                .flatten();
            if value.is_some_and(|v| keeps_array(file, name, *v, site.through)) {
                continue;
            }
            return Err(format!(
                "{name} is also assigned at line {} ({}): cannot tell which value feeds \
                 line {}",
                line(stmt),
                quote(file.text(stmt)),
                site.line
            ));
        }
    }
    Ok(())
}

/// `append(name, …)`, `name[i:j]`, a call of the growing function on name (`through`),
/// or these nested: the same backing array, grown or re-sliced.
fn keeps_array(file: &GoFile, name: &str, value: Node<'_>, through: Option<Through<'_>>) -> bool {
    // append(x[:0], …) and x[i:][:j] nest; unwrap them down to the name.
    let mut at = Some(value);
    while let Some(node) = at {
        at = match node.kind() {
            "identifier" => return file.text(node) == name,
            "call_expression" if is_append(file, node) => node
                .child_by_field_name("arguments")
                .and_then(|a| a.named_child(0)),
            "slice_expression" => node.child_by_field_name("operand"),
            "call_expression" => match through.filter(|t| calls(file, node, t.callee)) {
                Some(through) => node
                    .child_by_field_name("arguments")
                    .and_then(|a| named_children(a).get(through.arg).copied()),
                None => return false,
            },
            _ => return false,
        };
    }
    false
}

/// gofmt aligns the trailing comments of adjacent lines; changing the length of one
/// would need the others realigned, which is gofmt's job, not a patch's.
fn check_trailing_comments(file: &GoFile, decl: Node<'_>) -> Result<(), String> {
    let statement = declaring_statement(decl);
    let first = statement.start_position().row;
    let last = statement.end_position().row;
    let trailing = descendants(
        file.tree.root_node(),
        |n| n.start_position().row <= last + 1 && first <= n.end_position().row + 1,
        |n| n.kind() == "comment" && n.start_position().column > 0,
    );
    let code_before = |c: Node<'_>| {
        let start = c.start_byte();
        let before = file.text.get(..start).unwrap_or("");
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        !before.get(line_start..).unwrap_or("").trim().is_empty()
    };
    let trailing_rows: Vec<usize> = trailing
        .iter()
        .filter(|c| code_before(**c))
        .map(|c| c.start_position().row)
        .collect();
    let on_last = trailing_rows.contains(&last);
    let neighbour = trailing_rows
        .iter()
        .any(|&r| r + 1 == first || r == last + 1);
    if on_last && neighbour {
        return Err(format!(
            "the declaration at line {} has a trailing comment aligned with its \
             neighbours' by gofmt: rewrite it by hand",
            line(statement)
        ));
    }
    Ok(())
}

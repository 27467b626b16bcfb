//! The Go syntax tree (tree-sitter-go) and Go's scoping rules over it: which
//! declaration a name at some point of a function refers to. Every walk is iterative
//! (a tree cursor or a parent chain), so a deeply nested file can't overflow the stack.
use tree_sitter::{Node, Parser, Tree};

/// A Go file and its syntax tree.
pub(super) struct GoFile {
    pub text: String,
    pub tree: Tree,
}

impl GoFile {
    pub fn parse(text: String) -> Result<GoFile, String> {
        let mut parser = Parser::new();
        parser
            .set_language(&tree_sitter_go::LANGUAGE.into())
            .map_err(|e| format!("tree-sitter-go does not load: {e}"))?;
        let tree = parser
            .parse(&text, None)
            .ok_or_else(|| "tree-sitter-go gave no syntax tree".to_string())?;
        Ok(GoFile { text, tree })
    }

    pub fn text(&self, node: Node<'_>) -> &str {
        self.text.get(node.byte_range()).unwrap_or("")
    }
}

/// Messages quote source text; a long expression is cut to keep them one line.
pub(super) fn quote(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(60) {
        Some((at, _)) => format!("`{}…`", &one_line[..at]),
        None => format!("`{one_line}`"),
    }
}

/// 1-based, as the report's lines are.
pub(super) fn line(node: Node<'_>) -> u32 {
    u32::try_from(node.start_position().row)
        .unwrap_or(u32::MAX)
        .saturating_add(1)
}

/// Every node under `root` (itself included) for which `keep` holds, in source order;
/// `enter` says whether to look inside a node at all.
pub(super) fn descendants<'t>(
    root: Node<'t>,
    enter: impl Fn(Node<'t>) -> bool,
    keep: impl Fn(Node<'t>) -> bool,
) -> Vec<Node<'t>> {
    let mut found = Vec::new();
    let mut cursor = root.walk();
    loop {
        let node = cursor.node();
        if keep(node) {
            found.push(node);
        }
        if enter(node) && cursor.goto_first_child() {
            continue;
        }
        loop {
            if cursor.goto_next_sibling() {
                break;
            }
            if !cursor.goto_parent() {
                return found;
            }
        }
    }
}

pub(super) fn named_children<'t>(node: Node<'t>) -> Vec<Node<'t>> {
    let mut cursor = node.walk();
    node.named_children(&mut cursor).collect()
}

pub(super) fn field_children<'t>(node: Node<'t>, field: &str) -> Vec<Node<'t>> {
    let mut cursor = node.walk();
    node.children_by_field_name(field, &mut cursor).collect()
}

/// `true` when `node` has an unnamed child token `token` (`:=` in a range clause).
fn has_token(node: Node<'_>, token: &str) -> bool {
    let mut cursor = node.walk();
    node.children(&mut cursor)
        .any(|c| !c.is_named() && c.kind() == token)
}

pub(super) fn is_function(node: Node<'_>) -> bool {
    matches!(
        node.kind(),
        "function_declaration" | "method_declaration" | "func_literal"
    )
}

/// The outermost function around `node`: where every use of a local variable is.
pub(super) fn outermost_function(node: Node<'_>) -> Option<Node<'_>> {
    let mut outer = None;
    let mut at = Some(node);
    while let Some(n) = at {
        if is_function(n) {
            outer = Some(n);
        }
        at = n.parent();
    }
    outer
}

/// Go's integer literal syntax (decimal, 0x, 0o, 0b, legacy octal, `_` separators).
pub(super) fn int_literal(text: &str) -> Option<u64> {
    let digits: String = text.chars().filter(|&c| c != '_').collect();
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(rest) = lower.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (8, rest)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (2, rest)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    u64::from_str_radix(body, radix).ok()
}

/// What a name refers to at some point of a function.
#[derive(Debug, Clone, Copy)]
pub(super) enum Binding<'t> {
    /// A `:=` statement or a `var` spec inside a function.
    Local(Node<'t>),
    /// A parameter, receiver or named result of `func`.
    Param { func: Node<'t> },
    /// Declared by something that is not a plain declaration: a range clause, a type
    /// switch, a select case, a const.
    Other { what: &'static str, at: Node<'t> },
    /// A `var` at the top of the file.
    Package(Node<'t>),
    /// Not declared in this file.
    Missing,
}

/// The declaration `name` refers to at `at`, by Go's block scoping: the innermost
/// declaration whose scope holds `at`.
pub(super) fn resolve<'t>(file: &GoFile, name: &str, at: Node<'t>) -> Binding<'t> {
    let mut child = at;
    while let Some(node) = child.parent() {
        match node.kind() {
            "statement_list" => {
                // A name's scope starts after its declaration: only earlier statements.
                for stmt in named_children(node) {
                    if stmt.start_byte() >= child.start_byte() {
                        break;
                    }
                    if let Some(binding) = declares(file, stmt, name) {
                        return binding;
                    }
                }
            }
            "if_statement" | "expression_switch_statement" | "type_switch_statement" => {
                if node.kind() == "type_switch_statement"
                    && let Some(alias) = node.child_by_field_name("alias")
                    && alias.id() != child.id()
                    && names_in_list(file, alias).any(|n| n == name)
                {
                    return Binding::Other {
                        what: "a type switch",
                        at: node,
                    };
                }
                if let Some(init) = node.child_by_field_name("initializer")
                    && init.id() != child.id()
                    && let Some(binding) = declares(file, init, name)
                {
                    return binding;
                }
            }
            "for_statement" => {
                for clause in named_children(node) {
                    if clause.id() == child.id() && clause.kind() == "range_clause" {
                        continue; // the range expression is outside the loop's scope
                    }
                    match clause.kind() {
                        "for_clause" => {
                            if let Some(init) = clause.child_by_field_name("initializer")
                                && init.id() != child.id()
                                && let Some(binding) = declares(file, init, name)
                            {
                                return binding;
                            }
                        }
                        "range_clause" if has_token(clause, ":=") => {
                            if let Some(left) = clause.child_by_field_name("left")
                                && names_in_list(file, left).any(|n| n == name)
                            {
                                return Binding::Other {
                                    what: "a range clause",
                                    at: clause,
                                };
                            }
                        }
                        _ => {}
                    }
                }
            }
            "communication_case" => {
                if let Some(recv) = node.child_by_field_name("communication")
                    && recv.id() != child.id()
                    && recv.kind() == "receive_statement"
                    && has_token(recv, ":=")
                    && let Some(left) = recv.child_by_field_name("left")
                    && names_in_list(file, left).any(|n| n == name)
                {
                    return Binding::Other {
                        what: "a select case",
                        at: recv,
                    };
                }
            }
            "function_declaration" | "method_declaration" | "func_literal" => {
                let lists = ["receiver", "parameters", "result"]
                    .into_iter()
                    .filter_map(|f| node.child_by_field_name(f));
                for list in lists {
                    if list.id() == child.id() {
                        continue;
                    }
                    for param in named_children(list) {
                        if field_children(param, "name")
                            .into_iter()
                            .any(|n| file.text(n) == name)
                        {
                            return Binding::Param { func: node };
                        }
                    }
                }
            }
            "source_file" => {
                for decl in named_children(node) {
                    if decl.kind() == "var_declaration"
                        && let Some(Binding::Local(spec)) = declares(file, decl, name)
                    {
                        return Binding::Package(spec);
                    }
                }
                return Binding::Missing;
            }
            _ => {}
        }
        child = node;
    }
    Binding::Missing
}

/// The identifiers of an expression list (`a, b` of `a, b := …`).
fn names_in_list<'a>(file: &'a GoFile, list: Node<'a>) -> impl Iterator<Item = &'a str> {
    named_children(list)
        .into_iter()
        .filter(|n| n.kind() == "identifier")
        .map(|n| file.text(n))
}

/// Whether statement `stmt` declares `name`, and as what.
fn declares<'t>(file: &GoFile, stmt: Node<'t>, name: &str) -> Option<Binding<'t>> {
    match stmt.kind() {
        "short_var_declaration" => {
            let left = stmt.child_by_field_name("left")?;
            names_in_list(file, left)
                .any(|n| n == name)
                .then_some(Binding::Local(stmt))
        }
        "var_declaration" => {
            let mut specs = Vec::new();
            for child in named_children(stmt) {
                match child.kind() {
                    "var_spec" => specs.push(child),
                    "var_spec_list" => specs.extend(
                        named_children(child)
                            .into_iter()
                            .filter(|s| s.kind() == "var_spec"),
                    ),
                    _ => {}
                }
            }
            specs
                .into_iter()
                .find(|spec| {
                    field_children(*spec, "name")
                        .into_iter()
                        .any(|n| file.text(n) == name)
                })
                .map(Binding::Local)
        }
        "const_declaration" => {
            let declared = named_children(stmt).into_iter().any(|spec| {
                field_children(spec, "name")
                    .into_iter()
                    .any(|n| file.text(n) == name)
            });
            declared.then_some(Binding::Other {
                what: "a const declaration",
                at: stmt,
            })
        }
        _ => None,
    }
}

/// The statement that declares `name` for the binding `Local(decl)`, for messages:
/// the `:=` itself or the `var` around a spec.
pub(super) fn declaring_statement(decl: Node<'_>) -> Node<'_> {
    if decl.kind() == "var_spec" {
        let mut at = decl;
        while let Some(parent) = at.parent() {
            at = parent;
            if at.kind() == "var_declaration" {
                return at;
            }
        }
    }
    decl
}

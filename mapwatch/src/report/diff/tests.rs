//! Go snippets for each declaration form the diff rewrites and each it refuses.
use super::EditKind::{self, Map, Slice};
use super::locate::{Site, Through, grown_parameter, locate};
use super::render::apply;
use super::syntax::{GoFile, int_literal};

/// The advised size in every snippet.
const N: u64 = 64;

/// `src` with the declaration feeding the site on the first line containing `flagged`
/// rewritten, or the refusal.
fn rewrite(kind: EditKind, src: &str, flagged: &str) -> Result<String, String> {
    let line = src
        .lines()
        .position(|l| l.contains(flagged))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("no line contains {flagged:?}"));
    rewrite_at(kind, src, line)
}

fn rewrite_at(kind: EditKind, src: &str, line: u32) -> Result<String, String> {
    let file = GoFile::parse(src.to_string())?;
    let site = Site {
        kind,
        line,
        function: "main.f",
        n: N,
        through: None,
    };
    let rw = locate(&file, &site)?;
    Ok(apply(src, &[(rw.range, rw.text.as_str())]))
}

/// The snippet in a function, with `func f` on line 3.
fn in_func(body: &str) -> String {
    format!("package main\n\nfunc f(in []int, s *S) []int {{\n{body}}}\n")
}

#[track_caller]
fn assert_rewrites(kind: EditKind, body: &str, flagged: &str, before: &str, after: &str) {
    let src = in_func(body);
    assert!(src.contains(before), "{before:?} not in the snippet");
    let got = rewrite(kind, &src, flagged).unwrap_or_else(|why| panic!("refused: {why}"));
    assert_eq!(got, src.replacen(before, after, 1));
}

#[track_caller]
fn assert_refuses(kind: EditKind, src: &str, flagged: &str, why: &str) {
    match rewrite(kind, src, flagged) {
        Ok(got) => panic!("rewrote instead of refusing:\n{got}"),
        Err(got) => assert!(got.contains(why), "refused for another reason: {got}"),
    }
}

#[test]
fn var_slice_becomes_var_make() {
    assert_rewrites(
        Slice,
        "\tvar out []int\n\tfor _, v := range in {\n\t\tout = append(out, v)\n\t}\n\treturn out\n",
        "out = append",
        "var out []int",
        "var out = make([]int, 0, 64)",
    );
}

#[test]
fn empty_literal_becomes_make() {
    assert_rewrites(
        Slice,
        "\tout := []string{}\n\tout = append(out, \"x\")\n\t_ = out\n\treturn nil\n",
        "out = append",
        "out := []string{}",
        "out := make([]string, 0, 64)",
    );
}

#[test]
fn zero_length_makes_get_the_capacity() {
    for before in [
        "out := make([]int, 0)",
        "out := make([]int, 0, 4)",
        "out := make([]int, 0x0, 1_0)",
    ] {
        assert_rewrites(
            Slice,
            &format!("\t{before}\n\tout = append(out, in...)\n\treturn out\n"),
            "out = append",
            before,
            "out := make([]int, 0, 64)",
        );
    }
}

#[test]
fn nil_slices_become_var_make() {
    for before in [
        "var out = []int(nil)",
        "var out []int = nil",
        "var out = ([]int)(nil)",
    ] {
        assert_rewrites(
            Slice,
            &format!("\t{before}\n\tout = append(out, 1)\n\treturn out\n"),
            "out = append",
            before,
            "var out = make([]int, 0, 64)",
        );
    }
    assert_rewrites(
        Slice,
        "\tout := []int(nil)\n\tout = append(out, 1)\n\treturn out\n",
        "out = append",
        "out := []int(nil)",
        "out := make([]int, 0, 64)",
    );
}

#[test]
fn type_comes_from_the_source() {
    let src = "package main\n\nfunc f[T any](in []T) []T {\n\tvar out []T\n\tfor _, v := range in {\n\t\tout = append(out, v)\n\t}\n\treturn out\n}\n";
    let got = rewrite(Slice, src, "out = append").unwrap();
    assert!(got.contains("\tvar out = make([]T, 0, 64)\n"), "{got}");
    assert_rewrites(
        Slice,
        "\tvar out Items\n\tout = append(out, Item{})\n\treturn nil\n",
        "out = append",
        "var out Items",
        "var out = make(Items, 0, 64)",
    );
    assert_rewrites(
        Slice,
        "\tout := []struct{ a, b int }{}\n\tout = append(out, struct{ a, b int }{})\n\treturn nil\n",
        "out = append",
        "[]struct{ a, b int }{}",
        "make([]struct{ a, b int }, 0, 64)",
    );
}

#[test]
fn append_in_a_loop_in_a_closure_finds_the_captured_declaration() {
    let body = "\tout := []int{}\n\teach(func(v int) {\n\t\tfor i := 0; i < v; i++ {\n\t\t\tout = append(out, i)\n\t\t}\n\t})\n\treturn out\n";
    assert_rewrites(
        Slice,
        body,
        "out = append",
        "out := []int{}",
        "out := make([]int, 0, 64)",
    );
}

#[test]
fn the_innermost_declaration_is_the_one_rewritten() {
    let body = "\tout := []int{}\n\tif len(in) > 0 {\n\t\tout := []int{}\n\t\tout = append(out, 1)\n\t\t_ = out\n\t}\n\treturn out\n";
    let src = in_func(body);
    let got = rewrite(Slice, &src, "out = append").unwrap();
    assert_eq!(
        got,
        src.replacen("\t\tout := []int{}", "\t\tout := make([]int, 0, 64)", 1)
    );
}

#[test]
fn declaration_in_an_if_initializer() {
    assert_rewrites(
        Slice,
        "\tif out := []int{}; len(in) > 0 {\n\t\tout = append(out, 1)\n\t\treturn out\n\t}\n\treturn nil\n",
        "out = append",
        "out := []int{}",
        "out := make([]int, 0, 64)",
    );
}

#[test]
fn multi_line_append_is_found_from_any_of_its_lines() {
    let body = "\tvar out []int\n\tout = append(out,\n\t\t1,\n\t\t2)\n\treturn out\n";
    let src = in_func(body);
    for line in 6..=7 {
        let got = rewrite_at(Slice, &src, line).unwrap();
        assert!(
            got.contains("var out = make([]int, 0, 64)"),
            "line {line}: {got}"
        );
    }
}

#[test]
fn appends_and_reslices_elsewhere_do_not_count_as_other_values() {
    assert_rewrites(
        Slice,
        "\tout := []int{}\n\tout = append(out, 1)\n\tout = out[:0]\n\tout = append(out, in...)\n\treturn out\n",
        "out = append(out, in...)",
        "out := []int{}",
        "out := make([]int, 0, 64)",
    );
}

#[test]
fn append_to_a_reslice_of_itself_feeds_from_the_declaration() {
    assert_rewrites(
        Slice,
        "\tbuf := []byte{}\n\tfor _, v := range in {\n\t\tbuf = append(buf[:0], byte(v))\n\t}\n\treturn nil\n",
        "buf = append",
        "buf := []byte{}",
        "buf := make([]byte, 0, 64)",
    );
}

#[test]
fn map_forms() {
    let cases = [
        (
            "m := map[string]int{}",
            "m[k] = 1",
            "m := make(map[string]int, 64)",
        ),
        (
            "m := make(map[string]int)",
            "m[k]++",
            "m := make(map[string]int, 64)",
        ),
        (
            "m := make(map[string]int, 8)",
            "m[k] += 2",
            "m := make(map[string]int, 64)",
        ),
        (
            "var m = map[string]int{}",
            "m[k] = 1",
            "var m = make(map[string]int, 64)",
        ),
        (
            "var m = make(Counts)",
            "m[k] = 1",
            "var m = make(Counts, 64)",
        ),
    ];
    for (before, insert, after) in cases {
        let body =
            format!("\t{before}\n\tfor _, k := range keys {{\n\t\t{insert}\n\t}}\n\treturn nil\n");
        assert_rewrites(Map, &body, insert, before, after);
    }
}

#[test]
fn refuses_a_second_declaration() {
    let src =
        in_func("\tout := []int{}\n\tout, err := load()\n\tout = append(out, 1)\n\treturn out\n");
    assert_refuses(
        Slice,
        &src,
        "out = append",
        "out is declared 2 times in main.f (lines 4 and 5): cannot tell which one feeds line 6",
    );
}

#[test]
fn refuses_another_assignment() {
    let src = in_func(
        "\tout := []int{}\n\tif len(in) > 3 {\n\t\tout = in[1:]\n\t}\n\tout = append(out, 1)\n\treturn out\n",
    );
    assert_refuses(
        Slice,
        &src,
        "out = append",
        "out is also assigned at line 6 (`out = in[1:]`)",
    );
    let src = in_func("\tm := map[int]int{}\n\tm = other\n\tm[1] = 2\n\treturn nil\n");
    assert_refuses(Map, &src, "m[1] = 2", "m is also assigned at line 5");
}

#[test]
fn refuses_a_parameter() {
    let src = in_func("\tin = append(in, 1)\n\treturn in\n");
    assert_refuses(
        Slice,
        &src,
        "in = append",
        "in is a parameter of f: the caller's value feeds line 4",
    );
    let src = "package main\n\nfunc f() {\n\tgo func(out []int) {\n\t\tout = append(out, 1)\n\t}(nil)\n}\n";
    assert_refuses(
        Slice,
        src,
        "out = append",
        "out is a parameter of the closure at line 4",
    );
}

#[test]
fn refuses_fields_and_elements() {
    let src = in_func("\ts.items = append(s.items, 1)\n\treturn nil\n");
    assert_refuses(
        Slice,
        &src,
        "s.items = append",
        "appends to the field `s.items`: it is declared in a struct type",
    );
    let src = in_func("\tbuckets[i] = append(buckets[i], 1)\n\treturn nil\n");
    assert_refuses(
        Slice,
        &src,
        "buckets[i] = append",
        "an element of another map or slice",
    );
    let src = in_func("\ts.byName[k] = v\n\treturn nil\n");
    assert_refuses(
        Map,
        &src,
        "s.byName[k]",
        "inserts into the field `s.byName`",
    );
    let src = in_func("\tm := map[int]map[int]int{}\n\tm[1][2] = 3\n\treturn nil\n");
    assert_refuses(
        Map,
        &src,
        "m[1][2]",
        "inserts into `m[1]`, an element of another map",
    );
}

#[test]
fn refuses_a_non_zero_length() {
    for before in [
        "out := make([]int, 4)",
        "out := make([]int, len(in))",
        "out := make([]int, 1, 100)",
    ] {
        let src = in_func(&format!(
            "\t{before}\n\tout = append(out, 1)\n\treturn out\n"
        ));
        assert_refuses(
            Slice,
            &src,
            "out = append",
            "not 0: a length-0 make would change what the slice holds",
        );
    }
}

#[test]
fn refuses_a_non_empty_literal() {
    let src = in_func("\tout := []int{1, 2, 3}\n\tout = append(out, 4)\n\treturn out\n");
    assert_refuses(
        Slice,
        &src,
        "out = append",
        "starts with 3 elements (`[]int{1, 2, 3}`)",
    );
    let src = in_func("\tm := map[string]int{\n\t\t\"a\": 1,\n\t}\n\tm[k] = 2\n\treturn nil\n");
    assert_refuses(Map, &src, "m[k] = 2", "starts with 1 entries");
}

#[test]
fn refuses_a_line_with_no_append_or_insert() {
    let src = in_func("\tout := []int{}\n\tout = append(out, 1)\n\treturn out\n");
    assert_refuses(Slice, &src, "return out", "no append on line 6");
    assert_refuses(Map, &src, "return out", "no map insert");
    assert_refuses(Slice, &src, "package main", "no append on line 1");
    assert!(
        rewrite_at(Slice, &src, 999)
            .unwrap_err()
            .contains("no append on line 999")
    );
    assert!(rewrite_at(Slice, &src, 0).unwrap_err().contains("line 0"));
}

#[test]
fn refuses_an_append_not_assigned_back() {
    let src = in_func("\tout := []int{}\n\tother := append(out, 1)\n\treturn other\n");
    assert_refuses(Slice, &src, "append(out", "does not assign back to `out`");
    let src = in_func("\treturn append(in, 1)\n");
    assert_refuses(Slice, &src, "append(in", "does not assign back");
    let src =
        in_func("\ta, b := []int{}, []int{}\n\ta, b = append(a, 1), append(b, 2)\n\treturn a\n");
    assert_refuses(
        Slice,
        &src,
        "append(a",
        "2 appends on line 5 (to `a` and `b`)",
    );
}

#[test]
fn refuses_declarations_outside_the_function() {
    let src = "package main\n\nvar cache []int\n\nfunc f() {\n\tcache = append(cache, 1)\n}\n";
    assert_refuses(
        Slice,
        src,
        "cache = append",
        "cache is a package-level variable (line 3), not local to main.f",
    );
    let src = "package main\n\nfunc f() {\n\tcache = append(cache, 1)\n}\n";
    assert_refuses(
        Slice,
        src,
        "cache = append",
        "cache is not declared in this file",
    );
}

#[test]
fn refuses_other_declaring_forms() {
    let src = in_func(
        "\tfor _, out := range [][]int{in} {\n\t\tout = append(out, 1)\n\t}\n\treturn nil\n",
    );
    assert_refuses(
        Slice,
        &src,
        "out = append",
        "out is declared by a range clause at line 4",
    );
    let src = in_func("\tout := load()\n\tout = append(out, 1)\n\treturn out\n");
    assert_refuses(Slice, &src, "out = append", "takes its value from `load()`");
    let src = in_func("\tout, n := []int{}, 0\n\tout = append(out, n)\n\treturn out\n");
    assert_refuses(Slice, &src, "out = append", "declares 2 names at once");
    let src = in_func("\tvar (\n\t\tout []int\n\t)\n\tout = append(out, 1)\n\treturn out\n");
    assert_refuses(Slice, &src, "out = append", "is in a var ( … ) group");
    let src = in_func("\tvar m map[string]int\n\tm[k] = 1\n\treturn nil\n");
    assert_refuses(Map, &src, "m[k] = 1", "leaves the map nil");
    let src = in_func("\tm := []int{}\n\tm[0] = 1\n\treturn nil\n");
    assert_refuses(Map, &src, "m[0] = 1", "has type `[]int`, not a map type");
}

#[test]
fn refuses_capacities_it_should_not_touch() {
    let src = in_func("\tout := make([]int, 0, 100)\n\tout = append(out, 1)\n\treturn out\n");
    assert_refuses(
        Slice,
        &src,
        "out = append",
        "already sizes it to 100, at least the advised 64",
    );
    let src = in_func("\tout := make([]int, 0, len(in))\n\tout = append(out, 1)\n\treturn out\n");
    assert_refuses(
        Slice,
        &src,
        "out = append",
        "sizes it to `len(in)`, not a number",
    );
}

#[test]
fn refuses_when_gofmt_aligns_its_comment() {
    let body = "\tn := 0          // count\n\tout := []int{} // items\n\tout = append(out, n)\n\treturn out\n";
    let src = in_func(body);
    assert_refuses(
        Slice,
        &src,
        "out = append",
        "trailing comment aligned with its neighbours'",
    );
    // A lone trailing comment stays one space after the code, as gofmt puts it.
    assert_rewrites(
        Slice,
        "\tout := []int{} // items\n\tout = append(out, 1)\n\treturn out\n",
        "out = append",
        "out := []int{} // items",
        "out := make([]int, 0, 64) // items",
    );
}

#[test]
fn refuses_a_function_that_does_not_parse() {
    let src = in_func("\tout := []int{}\n\tout = append(out, 1)\n\tif {\n\treturn out\n");
    assert_refuses(
        Slice,
        &src,
        "out = append",
        "could not parse main.f cleanly",
    );
}

#[test]
fn any_line_of_any_prefix_is_decided_without_panicking() {
    // Every form above, then cut anywhere: half-written files parse with errors.
    let src = "package main\n\nvar cache []int\n\ntype S struct{ items []int }\n\n\
        func f[T any](in []T, s *S) []T {\n\tvar out []T\n\tm := map[string]int{}\n\
        \tls := make([]int, 0, 4) // c\n\tvar (\n\t\tg []int\n\t)\n\
        \tfor i, v := range in {\n\t\tout = append(out, v)\n\t\tm[\"k\"]++\n\
        \t\teach(func(x int) {\n\t\t\tls = append(ls, x, i)\n\t\t})\n\t}\n\
        \ts.items = append(s.items, 1)\n\tcache = append(cache, len(m))\n\
        \tg, out = append(g, 1), append(out[:0], in...)\n\treturn out\n}\n";
    let lines = u32::try_from(src.lines().count()).unwrap();
    for end in (0..=src.len()).step_by(13).chain([src.len()]) {
        let file = GoFile::parse(src[..end].to_string()).unwrap();
        for line in 0..=lines + 1 {
            for kind in [Slice, Map] {
                let site = Site {
                    kind,
                    line,
                    function: "main.f",
                    n: N,
                    through: None,
                };
                let _ = locate(&file, &site);
                let _ = grown_parameter(&file, &site);
                let through = Some(Through {
                    callee: "each",
                    arg: 0,
                });
                let _ = locate(&file, &Site { through, ..site });
            }
        }
    }
    // The whole snippet still gets its rewrites.
    let got = rewrite(Slice, src, "out = append(out, v)").unwrap();
    assert!(got.contains("\tvar out = make([]T, 0, 64)\n"), "{got}");
}

#[test]
fn go_integer_literals() {
    assert_eq!(int_literal("0"), Some(0));
    assert_eq!(int_literal("1_000"), Some(1000));
    assert_eq!(int_literal("0x1F"), Some(31));
    assert_eq!(int_literal("0o17"), Some(15));
    assert_eq!(int_literal("017"), Some(15));
    assert_eq!(int_literal("0b101"), Some(5));
    assert_eq!(int_literal("n"), None);
    assert_eq!(int_literal("99999999999999999999999"), None);
}

/// A slice site on the first line of `src` containing `flagged`.
fn slice_site<'a>(src: &str, flagged: &str, through: Option<Through<'a>>) -> Site<'a> {
    let line = src.lines().position(|l| l.contains(flagged)).unwrap() as u32 + 1;
    Site {
        kind: Slice,
        line,
        function: "main.f",
        n: N,
        through,
    }
}

/// The parameter index of `return append(p, …)` on the line containing `flagged`.
fn grown(src: &str, flagged: &str) -> Option<usize> {
    let file = GoFile::parse(src.to_string()).unwrap();
    grown_parameter(&file, &slice_site(src, flagged, None))
}

#[test]
fn a_function_returning_its_grown_parameter_names_which() {
    // (parameters, body, the flagged line's text, the grown parameter)
    let cases = [
        (
            "xs []int, v int",
            "\treturn append(xs, v)\n",
            "return",
            Some(0),
        ),
        (
            "n int, a, xs []int",
            "\treturn append(xs[:n], a...)\n",
            "return",
            Some(2),
        ),
        (
            "xs []int, vs ...int",
            "\treturn append(xs, vs...)\n",
            "return",
            Some(0),
        ),
        // Not the parameter, not returned, or a variadic one: no caller to follow.
        (
            "v int",
            "\tvar ys []int\n\treturn append(ys, v)\n",
            "return",
            None,
        ),
        (
            "xs []int",
            "\txs = append(xs, 1)\n\treturn xs\n",
            "append",
            None,
        ),
        (
            "v int, xs ...int",
            "\treturn append(xs, v)\n",
            "return",
            None,
        ),
    ];
    for (params, body, flagged, want) in cases {
        let src = format!("package main\n\nfunc add({params}) []int {{\n{body}}}\n");
        assert_eq!(grown(&src, flagged), want, "{src}");
    }
}

/// `src` rewritten for a call of `callee` growing argument `arg` on the line with `flagged`.
fn rewrite_through(src: &str, flagged: &str, callee: &str, arg: usize) -> Result<String, String> {
    let file = GoFile::parse(src.to_string())?;
    let site = slice_site(src, flagged, Some(Through { callee, arg }));
    let rw = locate(&file, &site)?;
    Ok(apply(src, &[(rw.range, rw.text.as_str())]))
}

#[test]
fn the_callers_declaration_is_rewritten_for_a_growing_call() {
    let body = "\tvar tags []int\n\tfor _, v := range in {\n\t\ttags = addTag(tags, v)\n\t}\n\treturn tags\n";
    let src = in_func(body);
    let got = rewrite_through(&src, "addTag(", "addTag", 0).unwrap();
    assert_eq!(
        got,
        src.replace("var tags []int", "var tags = make([]int, 0, 64)")
    );
    // A method call and a later argument.
    let body =
        "\tout := []int{}\n\tfor _, v := range in {\n\t\tout = s.add(v, out)\n\t}\n\treturn out\n";
    let src = in_func(body);
    let got = rewrite_through(&src, "s.add(", "add", 1).unwrap();
    assert_eq!(
        got,
        src.replace("out := []int{}", "out := make([]int, 0, 64)")
    );
}

#[test]
fn a_growing_call_is_refused_where_no_one_declaration_feeds_it() {
    let src = in_func("\tvar a, b []int\n\tb = addTag(a, 1)\n\treturn b\n");
    let why = rewrite_through(&src, "addTag(", "addTag", 0).unwrap_err();
    assert!(why.contains("does not assign back to `a`"), "{why}");
    let src = in_func("\tvar t []int\n\tt = addTag(t, 1)\n\tt = other(t)\n\treturn t\n");
    let why = rewrite_through(&src, "addTag(", "addTag", 0).unwrap_err();
    assert!(why.contains("t is also assigned at line 6"), "{why}");
    let src = in_func("\tvar t []int\n\tt = addTag(t, 1)\n\treturn t\n");
    let why = rewrite_through(&src, "addTag(", "grow", 0).unwrap_err();
    assert!(why.contains("no call of grow on line 5"), "{why}");
}

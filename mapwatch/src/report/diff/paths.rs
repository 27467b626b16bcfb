//! A file as compiled into the binary (/home/u/proj/handler.go, or
//! example.com/m/pkg/handler.go with -trimpath) to the user's copy of it under
//! `--source DIR`. Pure: the files under DIR are listed by the caller.
use std::path::{Component, Path, PathBuf};

fn components(path: &Path) -> Option<Vec<&str>> {
    path.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .map(|c| c.as_os_str().to_str())
        .collect()
}

/// The file under DIR (as a path relative to it) sharing the longest run of trailing
/// path components with `compiled`; among equals, the one whose whole relative path is
/// that run (DIR is then the build's directory). None, or a tie: the reason.
pub(super) fn match_suffix<'a>(
    compiled: &str,
    under_dir: &'a [PathBuf],
) -> Result<&'a Path, String> {
    // Windows builds record backslashes; a path's components are the same either way.
    let wanted: Vec<&str> = compiled
        .split(['/', '\\'])
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let Some(base) = wanted.last() else {
        return Err(format!("the report names no file ({compiled:?})"));
    };
    let mut best: Option<(usize, bool)> = None;
    let mut tied: Vec<&Path> = Vec::new();
    for candidate in under_dir {
        let Some(have) = components(candidate) else {
            continue;
        };
        let shared = have
            .iter()
            .rev()
            .zip(wanted.iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        if shared == 0 {
            continue;
        }
        let score = (shared, shared == have.len());
        match best {
            Some(b) if b > score => {}
            Some(b) if b == score => tied.push(candidate),
            _ => {
                best = Some(score);
                tied = vec![candidate];
            }
        }
    }
    match tied.as_slice() {
        [] => Err(format!(
            "no file under the source directory is named {base}"
        )),
        [one] => Ok(one),
        several => {
            let shown: Vec<String> = several
                .iter()
                .take(3)
                .map(|p| p.display().to_string())
                .collect();
            let more = if several.len() > 3 { ", …" } else { "" };
            Err(format!(
                "{} files under the source directory match {compiled} equally well ({}{more}): \
                 cannot tell which one was compiled",
                several.len(),
                shown.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::match_suffix;

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn compiled_paths_map_by_longest_suffix() {
        let under = paths(&[
            "handler.go",
            "cmd/api/main.go",
            "pkg/store/handler.go",
            "vendor/x/handler.go",
        ]);
        let m = |compiled| match_suffix(compiled, &under);
        assert_eq!(m("/home/u/proj/handler.go"), Ok(Path::new("handler.go")));
        assert_eq!(
            m("/home/u/proj/pkg/store/handler.go"),
            Ok(Path::new("pkg/store/handler.go"))
        );
        assert_eq!(
            m("example.com/m/cmd/api/main.go"),
            Ok(Path::new("cmd/api/main.go"))
        );
        assert_eq!(
            m("C:\\src\\proj\\cmd\\api\\main.go"),
            Ok(Path::new("cmd/api/main.go"))
        );
        let none = m("/home/u/proj/other.go").unwrap_err();
        assert!(
            none.contains("no file under the source directory is named other.go"),
            "{none}"
        );
        assert!(m("").is_err());
    }

    #[test]
    fn compiled_paths_matching_several_files_are_refused() {
        let under = paths(&["a/handler.go", "b/handler.go"]);
        let why = match_suffix("/build/handler.go", &under).unwrap_err();
        assert!(
            why.contains("2 files under the source directory match"),
            "{why}"
        );
        assert!(why.contains("a/handler.go, b/handler.go"), "{why}");
    }
}

//! `mapwatch report --format diff --source DIR`: the report's pre-size advice as a
//! patch against the user's Go source, applied where the slice or map is declared
//! rather than at the flagged append or insert. [`plan`] reads the files the report
//! names from DIR and decides each site (an [`Edit`] or a [`Refusal`] saying why
//! not); [`Plan::unified_diff`] renders from what was read, reading nothing more.
//! The Go side is pure and tested on snippets: `syntax.rs` (tree and scoping),
//! `locate.rs` (line → declaration), `forms.rs` (declaration → rewrite), `paths.rs` (compiled path → file under
//! DIR), `render.rs` (rewrites → unified diff).
mod forms;
mod locate;
mod paths;
mod render;
mod syntax;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::model::{Advice, Location, Report, Stack};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditKind {
    Slice,
    Map,
}

/// One declaration to pre-size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// Under the source directory.
    pub file: PathBuf,
    /// The declaration's line.
    pub line: u32,
    pub kind: EditKind,
    pub n: u64,
    /// The append or insert the declaration feeds (with the largest advice, when
    /// several feed from one declaration).
    pub site: Location,
    range: Range<usize>,
    text: String,
}

/// An advised site that the diff leaves out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub location: Option<Location>,
    pub why: String,
}

/// What `--format diff` does with a report.
#[derive(Debug)]
pub struct Plan {
    /// By file, then line.
    pub edits: Vec<Edit>,
    /// In the report's order: slice sites, then map sites.
    pub refusals: Vec<Refusal>,
    dir: PathBuf,
    /// The text of each edited file as read, relative path → text.
    sources: BTreeMap<PathBuf, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("source directory {}: {source}", dir.display())]
    SourceDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The Go files of a checkout, to name a compiled path by its path in the checkout
/// (SARIF wants paths relative to the repository).
pub struct SourceTree {
    files: Vec<PathBuf>,
}

impl SourceTree {
    pub fn open(dir: &Path) -> Result<SourceTree, DiffError> {
        let files = go_files(dir).map_err(|source| DiffError::SourceDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(SourceTree { files })
    }

    /// The file under the checkout that `compiled` (a path compiled into the binary)
    /// is, relative to the checkout; None when none or several match.
    pub fn relative(&self, compiled: &str) -> Option<&Path> {
        paths::match_suffix(compiled, &self.files).ok()
    }
}

/// Decides every advised site of `report` against the Go files under `dir`.
pub fn plan(report: &Report, dir: &Path) -> Result<Plan, DiffError> {
    let files = go_files(dir).map_err(|source| DiffError::SourceDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let slices = report
        .slice_sites
        .iter()
        .map(|s| (EditKind::Slice, &s.location, &s.advice, &s.stacks[..]));
    let maps = report
        .map_sites
        .iter()
        .map(|s| (EditKind::Map, &s.location, &s.advice, &s.stacks[..]));
    let mut parsed: BTreeMap<PathBuf, Result<syntax::GoFile, String>> = BTreeMap::new();
    let mut edits: Vec<Edit> = Vec::new();
    let mut refusals = Vec::new();
    for (kind, location, advice, stacks) in slices.chain(maps) {
        let Advice::PreSize { n, .. } = advice else {
            continue;
        };
        let Some(location) = location else {
            refusals.push(Refusal {
                location: None,
                why: "the report has no source line for this site".into(),
            });
            continue;
        };
        let sources = Sources {
            dir,
            files: &files,
            parsed: &mut parsed,
        };
        match decide(sources, kind, location, *n, stacks) {
            Ok(edit) => merge(&mut edits, &mut refusals, edit),
            Err(why) => refusals.push(Refusal {
                location: Some(location.clone()),
                why,
            }),
        }
    }
    edits.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    let sources = parsed
        .into_iter()
        .filter(|(rel, _)| edits.iter().any(|e| e.file == dir.join(rel)))
        .filter_map(|(rel, file)| file.ok().map(|f| (rel, f.text)))
        .collect();
    Ok(Plan {
        edits,
        refusals,
        dir: dir.to_path_buf(),
        sources,
    })
}

/// The Go files under the source directory, each parsed once when first needed.
struct Sources<'a> {
    dir: &'a Path,
    files: &'a [PathBuf],
    parsed: &'a mut BTreeMap<PathBuf, Result<syntax::GoFile, String>>,
}

impl Sources<'_> {
    /// The file a compiled path names, relative to the directory, and its syntax.
    fn file(&mut self, compiled: &str) -> Result<(PathBuf, &syntax::GoFile), String> {
        let rel = paths::match_suffix(compiled, self.files)?.to_path_buf();
        let dir = self.dir;
        let file = self.parsed.entry(rel.clone()).or_insert_with(|| {
            let path = dir.join(&rel);
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(syntax::GoFile::parse)
        });
        let file = file.as_ref().map_err(|why| why.clone())?;
        Ok((rel, file))
    }
}

fn decide(
    mut sources: Sources<'_>,
    kind: EditKind,
    location: &Location,
    n: u64,
    stacks: &[Stack],
) -> Result<Edit, String> {
    let (rel, file) = sources.file(&location.file)?;
    let site = locate::Site {
        kind,
        line: location.line,
        function: &location.function,
        n,
        through: None,
    };
    if kind == EditKind::Slice
        && let Some(arg) = locate::grown_parameter(file, &site)
    {
        return through_caller(sources, location, n, arg, stacks);
    }
    let rewrite = locate::locate(file, &site).map_err(|why| format!("{}: {why}", rel.display()))?;
    Ok(Edit {
        file: sources.dir.join(rel),
        line: rewrite.line,
        kind,
        n,
        site: location.clone(),
        range: rewrite.range,
        text: rewrite.text,
    })
}

/// The site is `return append(p, …)` in a function that grows its parameter `arg`
/// (`addTag`, inlined or not): the slice that grows is the caller's variable, so the
/// declaration to pre-size is in the one caller the report's stacks name.
fn through_caller(
    mut sources: Sources<'_>,
    location: &Location,
    n: u64,
    arg: usize,
    stacks: &[Stack],
) -> Result<Edit, String> {
    let callee = &callee_name(&location.function)[..];
    let mut callers: Vec<&Location> = stacks
        .iter()
        .filter(|s| s.frames.first() == Some(location))
        .filter_map(|s| s.frames.get(1))
        .collect();
    callers.sort();
    callers.dedup();
    let caller = match callers[..] {
        [caller] => caller,
        [] => {
            return Err(format!(
                "{callee} appends to its parameter and returns it, so its caller's slice is \
                 what grows, and the report names no caller (record with --stack-depth \
                 when {callee} is not inlined)"
            ));
        }
        [first, ..] => {
            return Err(format!(
                "{callee} appends to its parameter and returns it, and {} lines call it \
                 ({first}, …): pre-size the slice where each caller makes it",
                callers.len()
            ));
        }
    };
    let (rel, file) = sources.file(&caller.file)?;
    let site = locate::Site {
        kind: EditKind::Slice,
        line: caller.line,
        function: &caller.function,
        n,
        through: Some(locate::Through { callee, arg }),
    };
    let rewrite = locate::locate(file, &site).map_err(|why| {
        format!(
            "{callee} grows its parameter; at its caller, {}: {why}",
            rel.display()
        )
    })?;
    Ok(Edit {
        file: sources.dir.join(rel),
        line: rewrite.line,
        kind: EditKind::Slice,
        n,
        site: location.clone(),
        range: rewrite.range,
        text: rewrite.text,
    })
}

/// A function as a Go call names it: `addTag` for main.addTag, `add` for
/// main.(*T).add and for the generic main.List[...].add, `collect` for main.collect[...].
fn callee_name(symbol: &str) -> String {
    let mut depth = 0usize;
    let without_type_arguments: String = symbol
        .chars()
        .filter(|&c| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ => return depth == 0,
            }
            false
        })
        .collect();
    without_type_arguments
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Two sites fed by one declaration make one edit, sized for the larger.
fn merge(edits: &mut Vec<Edit>, refusals: &mut Vec<Refusal>, edit: Edit) {
    let same_file = |e: &&mut Edit| e.file == edit.file;
    let overlapping = edits
        .iter_mut()
        .filter(same_file)
        .find(|e| e.range.start < edit.range.end && edit.range.start < e.range.end);
    match overlapping {
        None => edits.push(edit),
        Some(existing) if existing.range == edit.range && existing.kind == edit.kind => {
            if edit.n > existing.n {
                *existing = edit;
            }
        }
        Some(existing) => refusals.push(Refusal {
            why: format!(
                "its declaration overlaps the one rewritten for {}",
                existing.site
            ),
            location: Some(edit.site),
        }),
    }
}

impl Plan {
    /// All edits as one unified diff, files sorted, for `patch -p1` or `git apply` in
    /// the source directory; empty when there is nothing to change.
    pub fn unified_diff(&self) -> String {
        let mut out = String::new();
        for (rel, old) in &self.sources {
            let full = self.dir.join(rel);
            let rewrites: Vec<(Range<usize>, &str)> = self
                .edits
                .iter()
                .filter(|e| e.file == full)
                .map(|e| (e.range.clone(), e.text.as_str()))
                .collect();
            let new = render::apply(old, &rewrites);
            out.push_str(&render::file_diff(&slash_path(rel), old, &new));
        }
        out
    }
}

/// A relative path as a diff header writes it, whatever the platform.
fn slash_path(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every .go file under `dir`, relative to it. Hidden directories (.git) are skipped,
/// and symbolic links are not followed, so a link loop can't keep the walk going.
fn go_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    let mut first = true;
    while let Some(rel) = pending.pop() {
        let entries = match std::fs::read_dir(dir.join(&rel)) {
            Ok(entries) => entries,
            // Only DIR itself must be readable; an unreadable subdirectory just holds
            // no candidates.
            Err(e) if first => return Err(e),
            Err(_) => continue,
        };
        first = false;
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            let Some(name_str) = name.to_str() else {
                continue;
            };
            if kind.is_dir() && !name_str.starts_with('.') {
                pending.push(rel.join(&name));
            } else if kind.is_file() && name_str.ends_with(".go") {
                found.push(rel.join(&name));
            }
        }
    }
    found.sort();
    Ok(found)
}

//! The documentation renders as one set of pages: every relative link in
//! README.md and docs/**/*.md points to a file of the repository, every
//! `#anchor` to a heading of its page (GitHub's heading ids), the README
//! links every page under docs/ and every page links back to the README, and
//! no page names the project's internal issue numbers or notes.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every `.md` file under docs/, sorted.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut out = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut out);
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The lines of a page outside fenced code blocks, with their numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// A line with each inline code span replaced by `code` (so a link whose
/// text is code still parses, and code that looks like a link is none).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        let ticks = rest[start..].chars().take_while(|c| *c == '`').count();
        let fence = &rest[start..start + ticks];
        let after = &rest[start + ticks..];
        let Some(end) = after.find(fence) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str("code");
        rest = &after[end + ticks..];
    }
    out.push_str(rest);
    out
}

/// GitHub's id for a heading: lower case, punctuation other than `-` and
/// `_` removed, spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The ids a page's headings get (a repeated one gets `-1`, `-2`, ...), and
/// those of explicit `<a id="...">` / `<a name="...">` anchors.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        if let Some(heading) = line.strip_prefix('#') {
            let heading = heading.trim_start_matches('#');
            if heading.starts_with(' ') {
                let base = slug(heading);
                let mut id = base.clone();
                let mut n = 0;
                while ids.contains(&id) {
                    n += 1;
                    id = format!("{base}-{n}");
                }
                ids.insert(id);
            }
        }
        for attr in ["<a id=\"", "<a name=\""] {
            for (_, after) in line.match_indices(attr).map(|(i, _)| line.split_at(i)) {
                let value = &after[attr.len()..];
                ids.insert(value.split('"').next().unwrap().to_owned());
            }
        }
    }
    ids
}

/// The targets of the inline links and images of a page, with line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let mut depth = 0usize;
            let end = after
                .char_indices()
                .find(|&(_, c)| match c {
                    '(' => {
                        depth += 1;
                        false
                    }
                    ')' if depth == 0 => true,
                    ')' => {
                        depth -= 1;
                        false
                    }
                    _ => false,
                })
                .map_or(after.len(), |(i, _)| i);
            let target = after[..end].split_whitespace().next().unwrap_or("");
            out.push((number, target.trim_matches(['<', '>']).to_owned()));
            rest = &after[end..];
        }
    }
    out
}

/// `dir/target` with `.` and `..` resolved, or `None` when it leaves the
/// repository.
fn resolve(dir: &Path, target: &str) -> Option<PathBuf> {
    let mut path = dir.strip_prefix(root()).unwrap().to_path_buf();
    for part in Path::new(target).components() {
        match part {
            Component::Normal(p) => path.push(p),
            Component::ParentDir => {
                if !path.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(root().join(path))
}

/// What is wrong with one link of `page`, if anything.
fn broken(page: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("empty link".to_owned());
    }
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (file, anchor) = match target.split_once('#') {
        Some((file, anchor)) => (file, Some(anchor)),
        None => (target, None),
    };
    let path = if file.is_empty() {
        page.to_path_buf()
    } else {
        match resolve(page.parent().unwrap(), file) {
            Some(path) => path,
            None => return Some(format!("{target} leaves the repository")),
        }
    };
    if !path.exists() {
        return Some(format!("{target}: no such file {}", rel(&path)));
    }
    let anchor = anchor?;
    if path.extension().is_none_or(|e| e != "md") {
        return Some(format!(
            "{target}: an anchor into a file that is not markdown"
        ));
    }
    let ids = anchors(&read(&path));
    (!ids.contains(anchor)).then(|| format!("{target}: no heading #{anchor} in {}", rel(&path)))
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        for (line, target) in links(&read(&page)) {
            checked += 1;
            if let Some(problem) = broken(&page, &target) {
                problems.push(format!("{}:{line}: {problem}", rel(&page)));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
    assert!(checked > 100, "only {checked} links found");
}

/// Every page under docs/ is linked from the README, and links back to it.
#[test]
fn the_readme_and_the_pages_link_each_other() {
    let readme = root().join("README.md");
    let linked: BTreeSet<PathBuf> = links(&read(&readme))
        .into_iter()
        .filter_map(|(_, t)| resolve(root(), t.split('#').next().unwrap()))
        .collect();
    let mut problems = Vec::new();
    for page in pages().into_iter().filter(|p| *p != readme) {
        if !linked.contains(&page) {
            problems.push(format!("README.md does not link {}", rel(&page)));
        }
        let back = links(&read(&page)).into_iter().any(|(_, t)| {
            resolve(page.parent().unwrap(), t.split('#').next().unwrap())
                .is_some_and(|p| p == readme)
        });
        if !back {
            problems.push(format!("{} does not link back to README.md", rel(&page)));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The cells of a table row: split at each `|` not escaped as `\|` (GitHub
/// splits inside code spans too).
fn cells(row: &str) -> usize {
    let inner = row.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    1 + inner
        .char_indices()
        .filter(|&(i, c)| c == '|' && !inner[..i].ends_with('\\'))
        .count()
}

/// Every row of a table has as many cells as its header (a stray `|` in a
/// cell shifts the columns, or drops the text past the header's count).
#[test]
fn every_table_row_has_the_cells_of_its_header() {
    let mut problems = Vec::new();
    let mut tables = 0;
    for page in pages() {
        let mut header: Option<usize> = None;
        for (number, line) in prose_lines(&read(&page)) {
            if !line.starts_with('|') {
                header = None;
                continue;
            }
            let n = cells(line);
            match header {
                Some(expected) if n != expected => problems.push(format!(
                    "{}:{number}: {n} cells, the header has {expected}",
                    rel(&page)
                )),
                Some(_) => {}
                None => {
                    header = Some(n);
                    tables += 1;
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(tables > 20, "only {tables} tables found");
}

/// Readers of the documentation have no access to the project's issue
/// tracker or design notes: no page names them.
#[test]
fn no_page_names_internal_issues_or_notes() {
    let mut problems = Vec::new();
    for page in pages() {
        for (number, line) in prose_lines(&read(&page)) {
            let lower = line.to_lowercase();
            let issue = lower.match_indices("issue").any(|(i, w)| {
                let after = lower[i + w.len()..].trim_start_matches(['s', ' ']);
                after.starts_with(|c: char| c.is_ascii_digit())
            });
            let hash_number = lower
                .match_indices(" #")
                .chain(lower.match_indices("(#"))
                .any(|(i, w)| lower[i + w.len()..].starts_with(|c: char| c.is_ascii_digit()));
            if issue || hash_number || lower.contains("design.md") {
                problems.push(format!("{}:{number}: {line}", rel(&page)));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The link checker itself: GitHub's ids, code spans, nested parentheses.
#[test]
fn the_checker_reads_markdown_as_github_does() {
    assert_eq!(slug("`sipadmit report`"), "sipadmit-report");
    assert_eq!(
        slug("Lync Server 2013 / Skype for Business Server"),
        "lync-server-2013--skype-for-business-server"
    );
    assert_eq!(
        slug("Rate limits, bans and fail2ban"),
        "rate-limits-bans-and-fail2ban"
    );
    let page = "# A\n## A\n```\n# not a heading\n```\n[x](b.md#c) `[y](z)` [`c`](d(e).md)\n";
    let ids = anchors(page);
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        ["a", "a-1"].map(str::to_owned)
    );
    let targets: Vec<String> = links(page).into_iter().map(|(_, t)| t).collect();
    assert_eq!(targets, ["b.md#c", "d(e).md"]);
    assert_eq!(cells("| a | `b \\| c` | d |"), 3);
    assert_eq!(cells("|---|---|"), 2);
}

/// Every protocol rule the proxy writes in decision records and in
/// `sipadmit_protocol_answers_total{rule}` (a `"proxy.…"`, `"rate_limit.…"`
/// or `"ban.…"` literal under src/proxy, src/transport or src/drain.rs) is
/// named in operations.md, so that an admin who meets one can look it up.
#[test]
fn every_protocol_rule_is_documented() {
    let mut sources = vec![root().join("src/drain.rs")];
    for dir in ["src/proxy", "src/transport"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                sources.push(path);
            }
        }
    }
    let mut rules = BTreeSet::new();
    for path in sources {
        let text = std::fs::read_to_string(&path).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            let named = ["proxy.", "rate_limit.", "ban."].iter().any(|p| {
                piece.strip_prefix(p).is_some_and(|rest| {
                    !rest.is_empty()
                        && rest
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b'_')
                })
            });
            if named {
                rules.insert(piece.to_owned());
            }
        }
    }
    assert!(rules.len() >= 20, "{rules:?}");
    let operations = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let missing: Vec<&String> = rules
        .iter()
        .filter(|rule| !operations.contains(&format!("`{rule}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/operations.md: {missing:?}");
}

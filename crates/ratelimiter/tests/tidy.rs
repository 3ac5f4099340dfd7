//! Invariants of ARCHITECTURE.md that the code's text can show, checked on
//! the workspace's sources (tests, doc comments and test modules aside):
//! time comes only from the clock, stores compute no decision, the core
//! names no transport; and the core's shape: no file of its modules over
//! 500 lines, and no import cycle among its top-level modules.
//! `.ci/run` checks the dependency rules on the crate graph.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The text of every `.rs` file under `dir`, by path from the workspace's
/// root (so messages name no machine's paths), in path order.
fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::from(dir)];
    while let Some(path) = pending.pop() {
        let full = workspace().join(&path);
        if full.is_dir() {
            for entry in std::fs::read_dir(&full).unwrap() {
                pending.push(path.join(entry.unwrap().file_name()));
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push((path, std::fs::read_to_string(&full).unwrap()));
        }
    }
    assert!(!files.is_empty(), "no sources under {dir}");
    files.sort();
    files
}

/// A file's code: lines that are comments dropped, and nothing from the
/// first `#[cfg(test)]` on.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap();
    let code: Vec<&str> = before_tests
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect();
    code.join("\n")
}

/// The code of every `.rs` file under `dir`.
fn code_under(dir: &str) -> Vec<(PathBuf, String)> {
    sources(dir)
        .into_iter()
        .map(|(path, text)| (path, code(&text)))
        .collect()
}

/// Every place in `dirs` (but `except`) where one of `words` appears.
fn find(dirs: &[&str], except: &[&str], words: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for dir in dirs {
        for (path, code) in code_under(dir) {
            if except.iter().any(|e| path.ends_with(e)) {
                continue;
            }
            for word in words {
                if code.contains(word) {
                    found.push(format!("{}: {word}", path.display()));
                }
            }
        }
    }
    found
}

const SOURCES: [&str; 4] = [
    "crates/ratelimiter/src",
    "crates/ratelimiter-dynamodb/src",
    "crates/ratelimiter-lambda/src",
    "crates/ratelimiter-cli/src",
];

#[test]
fn time_comes_only_from_the_clock() {
    let found = find(
        &SOURCES,
        &["ratelimiter/src/clock.rs"],
        &[
            "SystemTime::now",
            "Instant::now",
            "wall_clock(",
            "UNIX_EPOCH",
        ],
    );
    assert_eq!(found, Vec::<String>::new(), "read the time from a Clock");
}

#[test]
fn stores_never_compute_a_decision() {
    // Stores see steps and TATs only: no quota, no decision numbers.
    let found = find(
        &[
            "crates/ratelimiter/src/store.rs",
            "crates/ratelimiter/src/memory",
            "crates/ratelimiter/src/cache.rs",
            "crates/ratelimiter-dynamodb/src",
        ],
        &[],
        &["Quota", "Decision", ".decision("],
    );
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn the_core_names_no_transport() {
    let found = find(
        &["crates/ratelimiter/src"],
        &[],
        &["tokio", "aws_", "lambda_runtime", "http::", "hyper", "axum"],
    );
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn the_checks_can_fail() {
    // The scanner sees what it must: the clock reads the system time.
    let found = find(&["crates/ratelimiter/src"], &[], &["SystemTime::now"]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("clock.rs"), "{found:?}");
}

// The core's shape: small modules, layered. A file over the limit holds
// more than one job; a cycle means neither module can be understood, tested
// or moved alone.

const CORE: &str = "crates/ratelimiter/src";

/// The most lines a file of a core module may have, tests aside.
const MAX_LINES: usize = 500;

/// The files with more than `limit` lines before their first `#[cfg(test)]`
/// (test modules do not count, doc comments do), with their count.
fn longer_than(files: &[(PathBuf, String)], limit: usize) -> Vec<(PathBuf, usize)> {
    files
        .iter()
        .map(|(path, text)| {
            let before_tests = text.split("#[cfg(test)]").next().unwrap();
            (path.clone(), before_tests.lines().count())
        })
        .filter(|(_, lines)| *lines > limit)
        .collect()
}

/// The tokens of `code`: identifiers (and keywords, numbers), `::`, and
/// single punctuation marks. Comments (nested block comments too), string,
/// raw string and character literals are dropped, so that what they say is
/// never read as code.
fn tokens(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    // Just past the string whose text starts at `i`, closed by `"` and
    // `hashes` `#`; only a string that is not raw (`hashes` None) has escapes.
    let after_string = |mut i: usize, hashes: Option<usize>| {
        while i < chars.len() {
            match (chars[i], hashes) {
                ('\\', None) => i += 2,
                ('"', None) => return i + 1,
                ('"', Some(n)) if (1..=n).all(|k| at(i + k) == '#') => return i + 1 + n,
                _ => i += 1,
            }
        }
        i
    };
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            i = after_string(i + 1, None);
        } else if c == '\'' {
            if at(i + 1) == '\\' {
                // An escape: '\n', '\'', '\u{..}'.
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                // A lifetime or a label: its name follows as a word.
                tokens.push("'".to_owned());
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
            match word.as_str() {
                "b" | "c" if at(i) == '"' => i = after_string(i + 1, None),
                "r" | "br" | "cr" if at(i + hashes) == '"' => {
                    i = after_string(i + hashes + 1, Some(hashes));
                }
                // A raw identifier, r#name, is the word name.
                "r" if hashes == 1 => i += 1,
                _ => tokens.push(word),
            }
        } else if c == ':' && at(i + 1) == ':' {
            tokens.push("::".to_owned());
            i += 2;
        } else {
            tokens.push(c.to_string());
            i += 1;
        }
    }
    tokens
}

/// The names that paths from the crate's root begin with, in the tokens of
/// a file `depth` modules deep (`a.rs` and `a/mod.rs` are 1, `a/x.rs` 2):
/// `crate::m` and `$crate::m` anywhere (a `use` or a path in code), a group
/// `crate::{m::x, n, o::{..}}` (its items' first names), and the same after
/// a chain of `super::` that climbs to the root (one `super` from `a.rs`,
/// two from `a/x.rs`); a shorter chain stays inside the file's top-level
/// module. Not understood: `self::super::`, `#[path]` attributes, and an
/// inline `mod` (its `super` is read as if written at the file's level).
fn from_root(tokens: &[String], depth: usize) -> Vec<String> {
    let is = |i: usize, word: &str| tokens.get(i).is_some_and(|t| t == word);
    let mut names = Vec::new();
    for i in 0..tokens.len() {
        let start = if is(i, "crate") && is(i + 1, "::") {
            i + 2
        } else if is(i, "super") && !(i > 0 && is(i - 1, "::")) {
            let mut j = i;
            while is(j, "super") && is(j + 1, "::") {
                j += 2;
            }
            let climbs = (j - i) / 2;
            if climbs == 0 || climbs < depth {
                continue;
            }
            j
        } else {
            continue;
        };
        if !is(start, "{") {
            names.extend(tokens.get(start).cloned());
            continue;
        }
        let mut nesting = 0;
        let mut item_starts = false;
        for token in &tokens[start..] {
            match token.as_str() {
                "{" => {
                    nesting += 1;
                    item_starts = nesting == 1;
                }
                "}" => {
                    nesting -= 1;
                    if nesting == 0 {
                        break;
                    }
                }
                "," => item_starts = nesting == 1,
                _ => {
                    if item_starts {
                        names.push(token.clone());
                    }
                    item_starts = false;
                }
            }
        }
    }
    names
}

/// Each top-level module and the others it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The imports among the top-level modules of a crate whose `files` are
/// (path under `src`, text). The top-level modules are the `mod m;` items of
/// `lib.rs`; module `m` is `m.rs`, or `m/mod.rs` and every file under `m/`.
/// A module depends on another when its code (`code`, then `tokens`) names
/// it from the root (`from_root`).
fn dependencies(files: &[(PathBuf, String)]) -> Graph {
    let (_, lib) = files
        .iter()
        .find(|(path, _)| path == Path::new("lib.rs"))
        .expect("no lib.rs");
    let mut graph: Graph = tokens(&code(lib))
        .windows(3)
        .filter(|item| item[0] == "mod" && item[2] == ";")
        .map(|item| (item[1].clone(), BTreeSet::new()))
        .collect();
    for (path, text) in files {
        let mut inside: Vec<String> = path
            .with_extension("")
            .iter()
            .map(|part| part.to_string_lossy().into_owned())
            .collect();
        if inside.len() > 1 && inside.last().is_some_and(|last| last == "mod") {
            inside.pop();
        }
        let module = &inside[0];
        if !graph.contains_key(module) {
            continue;
        }
        for name in from_root(&tokens(&code(text)), inside.len()) {
            if name != *module && graph.contains_key(&name) {
                graph.get_mut(module).unwrap().insert(name);
            }
        }
    }
    graph
}

/// Every module that `from` reaches through one import or more.
fn reach<'g>(graph: &'g Graph, from: &'g str) -> BTreeSet<&'g str> {
    let mut seen = BTreeSet::new();
    let mut pending = vec![from];
    while let Some(module) = pending.pop() {
        for next in graph.get(module).into_iter().flatten() {
            if seen.insert(next.as_str()) {
                pending.push(next);
            }
        }
    }
    seen
}

/// The strongly connected components of more than one module (modules that
/// all reach each other), each in name order.
fn components(graph: &Graph) -> Vec<Vec<String>> {
    let reaches: BTreeMap<&str, BTreeSet<&str>> = graph
        .keys()
        .map(|module| (module.as_str(), reach(graph, module)))
        .collect();
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for (module, reached) in &reaches {
        if done.contains(module) {
            continue;
        }
        let component: Vec<&str> = reached
            .iter()
            .copied()
            .filter(|other| reaches.get(other).is_some_and(|r| r.contains(module)))
            .collect();
        done.extend(component.iter().copied());
        if component.len() > 1 {
            found.push(component.iter().map(|m| m.to_string()).collect());
        }
    }
    found
}

/// One cycle per component: the shortest from its first module back to it,
/// as `[a, b, a]`.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for component in components(graph) {
        let start = component[0].as_str();
        let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        'search: while let Some(module) = queue.pop_front() {
            for next in graph.get(module).into_iter().flatten() {
                if next == start {
                    let mut cycle = vec![start.to_owned()];
                    let mut at = module;
                    while at != start {
                        cycle.push(at.to_owned());
                        at = came_from[at];
                    }
                    cycle.push(start.to_owned());
                    cycle.reverse();
                    found.push(cycle);
                    break 'search;
                }
                if !came_from.contains_key(next.as_str()) {
                    came_from.insert(next, module);
                    queue.push_back(next);
                }
            }
        }
    }
    found
}

#[test]
fn no_core_module_is_over_500_lines() {
    let found: Vec<String> = longer_than(&sources(CORE), MAX_LINES)
        .iter()
        .map(|(path, lines)| format!("  {}: {lines} lines (limit {MAX_LINES})", path.display()))
        .collect();
    assert!(
        found.is_empty(),
        "core files over {MAX_LINES} lines, tests aside; split each by job, one file \
         per job (a module may become a directory, x/mod.rs and x/*.rs):\n{}",
        found.join("\n")
    );
}

#[test]
fn no_import_cycle_among_core_modules() {
    let files: Vec<(PathBuf, String)> = sources(CORE)
        .into_iter()
        .map(|(path, text)| (path.strip_prefix(CORE).unwrap().to_path_buf(), text))
        .collect();
    let graph = dependencies(&files);
    assert!(graph.len() > 1, "no modules found in lib.rs: {graph:?}");
    let found: Vec<String> = components(&graph)
        .iter()
        .zip(cycles(&graph))
        .map(|(component, cycle)| {
            let mut line = format!("  {}", cycle.join(" -> "));
            if component.len() + 1 > cycle.len() {
                line += &format!(
                    " (modules that all reach each other: {})",
                    component.join(", ")
                );
            }
            line
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles among the core's top-level modules (through crate:: or super:: \
         paths); break each: move what both need into a module below them, or have the \
         lower one take it as a parameter:\n{}",
        found.join("\n")
    );
}

fn graph(edges: &[(&str, &[&str])]) -> Graph {
    edges
        .iter()
        .map(|(module, names)| {
            (
                module.to_string(),
                names.iter().map(|n| n.to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn the_size_check_can_fail() {
    let lines = |n: usize| "x\n".repeat(n);
    let files = [
        (PathBuf::from("long.rs"), lines(501)),
        (PathBuf::from("full.rs"), lines(500)),
        (PathBuf::from("unended.rs"), lines(499) + "x"),
        // Test modules do not count; doc comments do.
        (
            PathBuf::from("tested.rs"),
            lines(500) + "#[cfg(test)]\n" + &lines(100),
        ),
        (
            PathBuf::from("documented.rs"),
            "//! A module.\n".to_owned() + &lines(500),
        ),
        (PathBuf::from("config/parse.rs"), lines(900)),
    ];
    assert_eq!(
        longer_than(&files, 500),
        [
            (PathBuf::from("long.rs"), 501),
            (PathBuf::from("documented.rs"), 501),
            (PathBuf::from("config/parse.rs"), 900),
        ]
    );
}

#[test]
fn the_cycle_check_can_fail() {
    let two = graph(&[("a", &["b"]), ("b", &["a"]), ("c", &["a"])]);
    assert_eq!(cycles(&two), [["a", "b", "a"]]);
    let three = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
    assert_eq!(cycles(&three), [["a", "b", "c", "a"]]);
    let dag = graph(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &["d"]), ("d", &[])]);
    assert_eq!(cycles(&dag), Vec::<Vec<String>>::new());
    assert_eq!(components(&dag), Vec::<Vec<String>>::new());
    // One component, two cycles: the shortest through its first module.
    let tangle = graph(&[
        ("a", &["c"]),
        ("b", &["a"]),
        ("c", &["a", "b"]),
        ("x", &["y"]),
        ("y", &["x"]),
    ]);
    assert_eq!(components(&tangle), [vec!["a", "b", "c"], vec!["x", "y"]]);
    assert_eq!(cycles(&tangle), [vec!["a", "c", "a"], vec!["x", "y", "x"]]);
}

#[test]
fn imports_are_read_from_the_code() {
    let files = [
        (
            "lib.rs",
            "//! [`crate::e`]\n\
             pub mod a;\nmod b;\npub(crate) mod c;\nmod d;\nmod e;\n\
             #[cfg(test)]\nmod tests;\n",
        ),
        ("a.rs", "use crate::{b::X, c};\n"),
        // Comments, doc links and literals name nothing.
        (
            "b/mod.rs",
            "mod inner;\n/// [`crate::a::Y`]\n// crate::a\n\
             /* crate::a /* crate::a */ crate::a */\n\
             fn f<'l>() -> char {\n\
                 g(\"crate::a\", r#\"crate::a\"#, b\"crate::a\");\n\
                 '{'\n\
             } // crate::a\n",
        ),
        // One `super` from b/inner.rs stays in b; two reach the root.
        ("b/inner.rs", "use super::Z;\nuse super::super::d::W;\n"),
        // A group over lines, nested; a module naming itself does not count.
        (
            "c.rs",
            "use crate::{\n    a::{self, Y},\n    b,\n};\n\
             fn g() -> crate :: d::T { crate::c::x() }\n",
        ),
        (
            "d.rs",
            "pub(crate) fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::a;\n}\n",
        ),
        (
            "e.rs",
            "macro_rules! m { () => { $crate::d::f() } }\nfn h() { super::a::f() }\n",
        ),
        // Not a module of lib.rs: not in the graph.
        ("orphan.rs", "use crate::a;\n"),
    ]
    .map(|(path, text)| (PathBuf::from(path), text.to_owned()));
    assert_eq!(
        dependencies(&files),
        graph(&[
            ("a", &["b", "c"]),
            ("b", &["d"]),
            ("c", &["a", "b", "d"]),
            ("d", &[]),
            ("e", &["a", "d"]),
        ])
    );
}

//! Reading a manifest: one main file and the files it includes, merged, with a map from
//! each TOML path to the file it came from; the only I/O of the crate is [`load`].

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::manifest::Manifest;

/// A manifest could not be read. Every variant names the file and, where it applies, the
/// TOML path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file is not TOML, or not a manifest.
    #[error("{file}: `{path}`: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// Where (`.` for the whole file).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An include could not be read or is not allowed.
    #[error("{file}: `workspace.include`: {message}")]
    Include {
        /// The file with the include.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Two files set the same value.
    #[error("`{path}` is set in both {first} and {second}")]
    Conflict {
        /// The TOML path.
        path: String,
        /// The file that set it first.
        first: String,
        /// The file that set it again.
        second: String,
    },
}

/// Which file each part of a merged manifest came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceMap {
    main: String,
    origins: Vec<(String, String)>,
}

impl SourceMap {
    /// The main file's name.
    pub fn main(&self) -> &str {
        &self.main
    }

    /// The file the value at `path` (`architecture.roles[2].key`) came from: the file of the
    /// longest recorded prefix, else the main file.
    pub fn file_of(&self, path: &str) -> &str {
        self.origins
            .iter()
            .filter(|(prefix, _)| {
                path == prefix
                    || (path.starts_with(prefix.as_str())
                        && matches!(path.as_bytes().get(prefix.len()), Some(b'.') | Some(b'[')))
            })
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(self.main.as_str(), |(_, f)| f.as_str())
    }
}

/// The SHA-256 of a manifest's canonical content, as hex.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ContentHash(pub String);

impl ContentHash {
    /// The first 12 hex digits, for display.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl std::fmt::Display for ContentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A manifest read and merged, with where each part came from and its content hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The merged manifest.
    pub manifest: Manifest,
    /// Where each part came from.
    pub sources: SourceMap,
    /// The content hash: SHA-256 over `aios-workspace/1` and the canonical JSON of the
    /// manifest (struct fields in declaration order, maps sorted by key, includes left out),
    /// so the same content gives the same hash on every machine however it is split in files.
    pub hash: ContentHash,
}

/// Computes the content hash of a manifest (see [`Loaded::hash`]).
pub fn content_hash(manifest: &Manifest) -> ContentHash {
    let mut h = Sha256::new();
    h.update(b"aios-workspace/1\n");
    // serialising plain data with sorted maps cannot fail; an error would be a bug, and is
    // hashed as its message rather than panicking
    match serde_json::to_vec(manifest) {
        Ok(bytes) => h.update(&bytes),
        Err(e) => h.update(e.to_string().as_bytes()),
    }
    ContentHash(hex::encode(h.finalize()))
}

fn parse_table(file: &str, text: &str) -> Result<toml::Table, LoadError> {
    text.parse::<toml::Table>().map_err(|e| {
        let message = e.message().trim().to_string();
        let message = match e.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: {message}")
            }
            None => message,
        };
        LoadError::Invalid {
            file: file.to_string(),
            path: ".".into(),
            message,
        }
    })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn merge(
    dst: &mut toml::Table,
    src: toml::Table,
    path: &str,
    file: &str,
    map: &mut SourceMap,
) -> Result<(), LoadError> {
    for (key, value) in src {
        let here = join(path, &key);
        match (dst.get_mut(&key), value) {
            (None, value) => {
                map.origins.push((here, file.to_string()));
                dst.insert(key, value);
            }
            (Some(toml::Value::Table(d)), toml::Value::Table(s)) => {
                merge(d, s, &here, file, map)?;
            }
            (Some(toml::Value::Array(d)), toml::Value::Array(s)) => {
                for v in s {
                    map.origins
                        .push((format!("{here}[{}]", d.len()), file.to_string()));
                    d.push(v);
                }
            }
            (Some(_), _) => {
                return Err(LoadError::Conflict {
                    first: map.file_of(&here).to_string(),
                    path: here,
                    second: file.to_string(),
                })
            }
        }
    }
    Ok(())
}

fn includes(file: &str, table: &toml::Table) -> Result<Vec<String>, LoadError> {
    let Some(list) = table
        .get("workspace")
        .and_then(|w| w.as_table())
        .and_then(|w| w.get("include"))
    else {
        return Ok(vec![]);
    };
    let err = |message: String| LoadError::Include {
        file: file.to_string(),
        message,
    };
    let list = list
        .as_array()
        .ok_or_else(|| err("expected a list of file names".into()))?;
    let mut out = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let name = v
            .as_str()
            .ok_or_else(|| err(format!("entry {i} is not a string")))?;
        check_include_name(name).map_err(|m| err(format!("entry {i} `{name}`: {m}")))?;
        if out.iter().any(|n| n == name) {
            return Err(err(format!("`{name}` is included twice")));
        }
        out.push(name.to_string());
    }
    Ok(out)
}

/// An include names a file in the manifest's folder or below it: relative, without `..`,
/// ending in `.toml`.
fn check_include_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.starts_with('/') || name.starts_with('\\') || name.contains(':') {
        return Err("must be a path relative to the manifest's folder".into());
    }
    if name
        .split(['/', '\\'])
        .any(|part| part == ".." || part == "." || part.is_empty())
    {
        return Err("must stay inside the manifest's folder (no `..`, `.` or empty parts)".into());
    }
    if !name.ends_with(".toml") {
        return Err("must be a `.toml` file".into());
    }
    Ok(())
}

/// Parses a manifest from text; `resolve` returns the text of an included file by its name
/// (a closure over a map in tests, the file system in [`load`]). Included files may not
/// include further files nor set `workspace`; tables merge, lists append, and a value set in
/// two files is a [`LoadError::Conflict`].
pub fn parse_with(
    main: &str,
    text: &str,
    resolve: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Loaded, LoadError> {
    let mut map = SourceMap {
        main: main.to_string(),
        origins: vec![],
    };
    let mut table = parse_table(main, text)?;
    for name in includes(main, &table)? {
        let text = resolve(&name).map_err(|m| LoadError::Include {
            file: main.to_string(),
            message: format!("cannot read `{name}`: {m}"),
        })?;
        let sub = parse_table(&name, &text)?;
        if sub.contains_key("workspace") {
            return Err(LoadError::Invalid {
                file: name,
                path: "workspace".into(),
                message: "an included file may not set `workspace` (name, version and includes \
                          belong in the main file)"
                    .into(),
            });
        }
        merge(&mut table, sub, "", &name, &mut map)?;
    }
    let manifest: Manifest =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let file = map.file_of(&path).to_string();
            LoadError::Invalid {
                file,
                path,
                message: inner.message().trim().to_string(),
            }
        })?;
    let hash = content_hash(&manifest);
    Ok(Loaded {
        manifest,
        sources: map,
        hash,
    })
}

/// Parses a manifest that includes nothing.
pub fn parse(main: &str, text: &str) -> Result<Loaded, LoadError> {
    parse_with(main, text, &mut |name| {
        Err(format!(
            "no file `{name}` (includes need `parse_with` or `load`)"
        ))
    })
}

/// Reads the manifest at `path` and the files it includes, from its folder.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let main = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::Invalid {
        file: path.display().to_string(),
        path: ".".into(),
        message: format!("cannot read: {e}"),
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_with(&main, &text, &mut |name| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = r#"
[workspace]
name = "w"
include = ["roles.toml"]

[foundation]
intent = "x"
"#;

    #[test]
    fn includes_merge_and_remember_their_file() {
        let loaded = parse_with("workspace.toml", MAIN, &mut |name| {
            assert_eq!(name, "roles.toml");
            Ok("[[architecture.roles]]\nkey = \"a\"\n[[architecture.roles]]\nkey = \"b\"\n".into())
        });
        let loaded = loaded.unwrap_or_else(|e| unreachable!("{e}"));
        let arch = loaded.manifest.architecture.clone().unwrap_or_default();
        assert_eq!(arch.roles.len(), 2);
        assert_eq!(
            loaded.sources.file_of("architecture.roles[1].key"),
            "roles.toml"
        );
        assert_eq!(
            loaded.sources.file_of("foundation.intent"),
            "workspace.toml"
        );
        assert_eq!(loaded.sources.file_of("workspace.name"), "workspace.toml");
    }

    #[test]
    fn the_same_content_split_differently_hashes_the_same() {
        let one = parse(
            "workspace.toml",
            "[workspace]\nname = \"w\"\n[foundation]\nintent = \"x\"\n[[architecture.roles]]\nkey = \"a\"\n",
        );
        let split = parse_with(
            "workspace.toml",
            "[workspace]\nname = \"w\"\ninclude = [\"r.toml\"]\n[foundation]\nintent = \"x\"\n",
            &mut |_| Ok("[[architecture.roles]]\nkey = \"a\"\n".into()),
        );
        match (one, split) {
            (Ok(a), Ok(b)) => assert_eq!(a.hash, b.hash),
            (a, b) => unreachable!("{a:?} {b:?}"),
        }
    }

    #[test]
    fn hostile_includes_are_refused() {
        for name in [
            "../etc/passwd.toml",
            "/abs.toml",
            "a/../b.toml",
            "x.txt",
            "",
            "C:x.toml",
        ] {
            let text = format!("[workspace]\nname = \"w\"\ninclude = [{name:?}]\n");
            let err = parse_with("workspace.toml", &text, &mut |_| Ok(String::new()));
            assert!(
                matches!(err, Err(LoadError::Include { .. })),
                "{name}: {err:?}"
            );
        }
    }

    #[test]
    fn a_value_set_twice_is_a_conflict_naming_both_files() {
        let err = parse_with(
            "workspace.toml",
            "[workspace]\nname = \"w\"\ninclude = [\"f.toml\"]\n[foundation]\nintent = \"x\"\n",
            &mut |_| Ok("[foundation]\nintent = \"y\"\n".into()),
        );
        assert_eq!(
            err.map(|_| ()),
            Err(LoadError::Conflict {
                path: "foundation.intent".into(),
                first: "workspace.toml".into(),
                second: "f.toml".into()
            })
        );
    }

    #[test]
    fn unknown_fields_name_file_and_path() {
        let err = parse_with(
            "workspace.toml",
            "[workspace]\nname = \"w\"\ninclude = [\"r.toml\"]\n",
            &mut |_| Ok("[[architecture.roles]]\nkey = \"a\"\ncolour = \"red\"\n".into()),
        );
        match err {
            Err(LoadError::Invalid {
                file,
                path,
                message,
            }) => {
                assert_eq!(file, "r.toml");
                assert_eq!(path, "architecture.roles[0].colour");
                assert!(message.contains("colour"), "{message}");
            }
            other => unreachable!("{other:?}"),
        }
    }

    #[test]
    fn toml_syntax_errors_give_line_and_column() {
        let err = parse("workspace.toml", "[workspace\nname = 1");
        match err {
            Err(LoadError::Invalid { message, .. }) => {
                assert!(message.starts_with("line 1"), "{message}")
            }
            other => unreachable!("{other:?}"),
        }
    }
}

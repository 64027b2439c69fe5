//! Virtual paths: what a client names, normalised before it reaches the
//! file system. A `VPath` is always absolute inside the user's root; there
//! is no way to spell a path above it.

use std::fmt;

use super::VaultError;

/// Longest file or folder name accepted, in bytes (common file-system limit).
const MAX_NAME: usize = 255;
/// Most components in a path.
const MAX_DEPTH: usize = 64;

/// A normalised path inside a user's root: components without `.`, `..`,
/// empty parts, NUL, or backslashes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VPath {
    parts: Vec<String>,
}

impl VPath {
    /// The user's root folder, `/`.
    pub fn root() -> Self {
        Self::default()
    }

    /// Resolves `arg` as a client gave it against the current folder `cwd`.
    /// `..` stops at the root. NUL and backslashes are refused rather than
    /// interpreted, so no spelling of a path reaches outside the root.
    pub fn resolve(cwd: &VPath, arg: &str) -> Result<VPath, VaultError> {
        if arg.contains('\0') {
            return Err(VaultError::InvalidPath("NUL in path"));
        }
        if arg.contains('\\') {
            return Err(VaultError::InvalidPath("backslash in path"));
        }
        let mut parts = if arg.starts_with('/') {
            Vec::new()
        } else {
            cwd.parts.clone()
        };
        for part in arg.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                name => {
                    if name.len() > MAX_NAME {
                        return Err(VaultError::InvalidPath("name too long"));
                    }
                    if name.chars().any(char::is_control) {
                        return Err(VaultError::InvalidPath("control character in name"));
                    }
                    parts.push(name.to_owned());
                }
            }
            if parts.len() > MAX_DEPTH {
                return Err(VaultError::InvalidPath("path too deep"));
            }
        }
        Ok(VPath { parts })
    }

    /// The path's components.
    pub fn parts(&self) -> &[String] {
        &self.parts
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The last component, if any.
    pub fn name(&self) -> Option<&str> {
        self.parts.last().map(String::as_str)
    }

    /// The parent folder (the root's parent is the root).
    pub fn parent(&self) -> VPath {
        let mut parts = self.parts.clone();
        parts.pop();
        VPath { parts }
    }
}

impl fmt::Display for VPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parts.is_empty() {
            return f.write_str("/");
        }
        for p in &self.parts {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cwd: &str, arg: &str) -> Result<String, VaultError> {
        let cwd = VPath::resolve(&VPath::root(), cwd).expect("cwd");
        VPath::resolve(&cwd, arg).map(|p| p.to_string())
    }

    #[test]
    fn dot_dot_never_leaves_the_root() {
        assert_eq!(r("/", "..").expect("ok"), "/");
        assert_eq!(
            r("/a/b", "../../../../etc/passwd").expect("ok"),
            "/etc/passwd"
        );
        assert_eq!(r("/a", "b/./c//d/..").expect("ok"), "/a/b/c");
        assert_eq!(r("/a", "/x").expect("ok"), "/x");
        assert_eq!(r("/a", "").expect("ok"), "/a");
    }

    #[test]
    fn hostile_spellings_are_refused() {
        assert!(r("/", "a\\..\\..\\b").is_err());
        assert!(r("/", "a\0b").is_err());
        assert!(r("/", "a\nb").is_err());
        assert!(r("/", &"x".repeat(256)).is_err());
        assert!(r("/", &"a/".repeat(65)).is_err());
    }
}

//! Looking up paths inside a template's root filesystem without ever leaving it.
//!
//! Symlinks in a template are untrusted: an absolute link is resolved against the template's
//! root, and `..` never climbs above it, the way the sandbox itself would see them.

use std::path::{Component, Path, PathBuf};

const MAX_LINKS: usize = 40;

/// Resolves `path` (as seen inside the sandbox) to a host path under `root`, following symlinks
/// inside `root`. `None` when it does not exist or loops.
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).map(str::to_owned).rev().collect();
    let mut inside: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                inside.pop();
                continue;
            }
            _ => {}
        }
        let host = inside.iter().fold(root.to_owned(), |p, c| p.join(c)).join(&part);
        let meta = std::fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            if target.has_root() {
                inside.clear();
            }
            for c in target.components().rev() {
                if let Component::Normal(s) = c {
                    pending.push(s.to_string_lossy().into_owned());
                } else if c == Component::ParentDir {
                    pending.push("..".into());
                }
            }
        } else {
            inside.push(part);
        }
    }
    Some(inside.iter().fold(root.to_owned(), |p, c| p.join(c)))
}

/// Finds the program `argv0` would run inside `root`: as a path when it contains `/`,
/// else along `PATH` (the sandbox's). Returns the in-sandbox path of an executable file.
pub fn find_program(root: &Path, argv0: &str, path_var: &str, workdir: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |inside: &str| {
        resolve(root, inside)
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if argv0.contains('/') {
        let inside = if argv0.starts_with('/') { argv0.to_owned() } else { format!("{workdir}/{argv0}") };
        return executable(&inside).then_some(inside);
    }
    path_var
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn links_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/busybox"), "").unwrap();
        std::fs::set_permissions(root.join("bin/busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
        symlink("busybox", root.join("bin/sh")).unwrap();
        symlink("/bin/busybox", root.join("bin/abs")).unwrap();
        symlink("../../../../../etc/passwd", root.join("bin/escape")).unwrap();
        symlink("loop", root.join("bin/loop")).unwrap();
        assert_eq!(resolve(root, "/bin/sh").unwrap(), root.join("bin/busybox"));
        assert_eq!(resolve(root, "/bin/abs").unwrap(), root.join("bin/busybox"));
        assert_eq!(resolve(root, "/bin/escape"), None, "must look for /etc/passwd inside the root");
        assert_eq!(resolve(root, "/bin/loop"), None);
        assert_eq!(find_program(root, "sh", "/usr/bin:/bin", "/").as_deref(), Some("/bin/sh"));
        assert_eq!(find_program(root, "/bin/abs", "", "/").as_deref(), Some("/bin/abs"));
        assert_eq!(find_program(root, "nope", "/usr/bin:/bin", "/"), None);
    }
}

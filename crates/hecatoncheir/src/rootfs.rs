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

/// Resolves an image's `User` (`name`, `uid`, `uid:gid`, `name:group`) to numeric ids, reading
/// the template's own `/etc/passwd` and `/etc/group`. `None` when a name is unknown.
pub fn lookup_user(root: &Path, user: &str) -> Option<(u32, u32)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // The image's files are untrusted: read at most 1 MiB of each, a line at a time.
    let table = |file: &str| -> Vec<Vec<String>> {
        use std::io::{BufRead, Read};
        let Some(f) = resolve(root, file).and_then(|p| std::fs::File::open(p).ok()) else { return Vec::new() };
        std::io::BufReader::new(f.take(1 << 20))
            .lines()
            .map_while(Result::ok)
            .map(|l| l.splitn(5, ':').map(str::to_owned).collect())
            .collect()
    };
    let passwd = table("/etc/passwd");
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, passwd.iter().find(|f| f.get(2).is_some_and(|x| x == u)).and_then(|f| f.get(3)?.parse().ok())),
        Err(_) => {
            let entry = passwd.iter().find(|f| f.first().is_some_and(|n| n == u))?;
            (entry.get(2)?.parse().ok()?, entry.get(3).and_then(|g| g.parse().ok()))
        }
    };
    let gid = match g {
        None => primary_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => table("/etc/group").iter().find(|f| f.first().is_some_and(|n| n == g))?.get(2)?.parse().ok()?,
        },
    };
    Some((uid, gid))
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

    #[test]
    fn users_by_name_or_number() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n").unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(lookup_user(root, "app"), Some((1000, 1001)));
        assert_eq!(lookup_user(root, "1000"), Some((1000, 1001)));
        assert_eq!(lookup_user(root, "app:staff"), Some((1000, 50)));
        assert_eq!(lookup_user(root, "4242:7"), Some((4242, 7)));
        assert_eq!(lookup_user(root, "4242"), Some((4242, 0)));
        assert_eq!(lookup_user(root, "ghost"), None);
    }
}

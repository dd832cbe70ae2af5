//! The env file `local-cloud up` writes for shells: `export NAME='value'` lines.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::Error;

/// `export NAME='value'` lines a POSIX shell can source, after a comment
/// saying where they come from.
pub fn render_env_file(vars: &[(&str, String)]) -> String {
    let mut out = String::from(
        "# Written by `local-cloud up`: moto (AWS) and the Kubernetes emulator for Trellis.\n\
         # Valid while that process runs; it removes this file when it stops.\n",
    );
    for (name, value) in vars {
        out.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    out
}

/// Writes `contents` to a temporary file beside `path` and renames it over
/// `path`, so a reader polling for the file never sees half of it.
pub fn write_atomically(path: &Path, contents: &str) -> Result<(), Error> {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
    let written = (|| {
        let mut file = File::create(&partial)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&partial);
        return Err(Error::Io { action: "write", path: partial, source });
    }
    fs::rename(&partial, path).map_err(|source| {
        let _ = fs::remove_file(&partial);
        Error::Io { action: "write", path: path.to_owned(), source }
    })
}

/// Single quotes keep everything literal; a single quote itself becomes `'\''`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_single_quoted() {
        let text = render_env_file(&[("A", "x y".to_owned()), ("B", "it's $HOME".to_owned())]);
        let exports: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
        assert_eq!(exports, ["export A='x y'", r"export B='it'\''s $HOME'"]);
    }

    #[test]
    fn write_replaces_the_file_and_leaves_no_partial() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cloud.env");
        write_atomically(&path, "one\n").expect("first write");
        write_atomically(&path, "two\n").expect("second write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "two\n");
        let names: Vec<_> = fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("cloud.env")]);
    }
}

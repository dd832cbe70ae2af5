//! The project-local virtualenv that holds moto and boto3.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aws_lc_rs::digest;

use super::{Error, aws_dir, output_tail};

/// Overrides where the virtualenv lives (default `<repo root>/.venv`).
pub const VENV_ENV: &str = "TRELLIS_VENV";
/// Overrides the interpreter that creates the virtualenv (default `python3`).
pub const PYTHON_ENV: &str = "TRELLIS_PYTHON";

/// Written after a successful install; holds the SHA-256 of the
/// requirements.txt it was made from.
const STAMP: &str = ".trellis-requirements.sha256";
/// flock()ed while checking or installing, so parallel tests and a
/// `local-cloud` started meanwhile wait for one install instead of racing pip.
const LOCK: &str = ".trellis-venv.lock";

/// A virtualenv with exactly `acceptance/aws/requirements.txt` installed.
#[derive(Debug, Clone)]
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    /// The virtualenv at `$TRELLIS_VENV` or `<repo root>/.venv`, created or
    /// re-installed first if requirements.txt changed since the last install.
    pub fn ensure() -> Result<Venv, Error> {
        let dir = match std::env::var_os(VENV_ENV) {
            Some(dir) => PathBuf::from(dir),
            None => default_dir(),
        };
        Venv::ensure_at(&dir)
    }

    /// Like [`Venv::ensure`], at `dir`. Refuses to touch a directory that is
    /// neither empty nor a virtualenv.
    pub fn ensure_at(dir: &Path) -> Result<Venv, Error> {
        let requirements = aws_dir().join("requirements.txt");
        let wanted = fs::read(&requirements).map_err(Error::io("read", &requirements))?;
        let wanted = hex(digest::digest(&digest::SHA256, &wanted).as_ref());

        fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        let lock_path = dir.join(LOCK);
        let lock = File::create(&lock_path).map_err(Error::io("create", &lock_path))?;
        lock.lock().map_err(Error::io("lock", &lock_path))?;

        let venv = Venv { dir: dir.to_owned() };
        let stamp_path = dir.join(STAMP);
        let current = fs::read_to_string(&stamp_path).unwrap_or_default();
        if current.trim() == wanted && venv.python().is_file() && venv.bin("moto_server").is_file() {
            return Ok(venv);
        }

        venv.clear()?;
        eprintln!(
            "trellis: installing {} into {} (once per change of that file)",
            requirements.display(),
            dir.display()
        );
        let base_python = std::env::var_os(PYTHON_ENV).unwrap_or_else(|| OsString::from("python3"));
        run(Command::new(&base_python).arg("-m").arg("venv").arg(dir))?;
        run(Command::new(venv.python())
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--quiet", "-r"])
            .arg(&requirements))?;

        // Written last, and atomically: an interrupted install leaves no stamp
        // and is redone next time.
        let partial = dir.join(format!("{STAMP}.partial"));
        fs::write(&partial, format!("{wanted}\n")).map_err(Error::io("write", &partial))?;
        fs::rename(&partial, &stamp_path).map_err(Error::io("write", &stamp_path))?;
        Ok(venv)
    }

    /// The virtualenv's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The virtualenv's interpreter, with moto and boto3 importable.
    pub fn python(&self) -> PathBuf {
        self.bin("python")
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// Empties the directory for a fresh `python -m venv`, keeping the lock
    /// we hold. Stale packages must go so the venv holds exactly the pins.
    fn clear(&self) -> Result<(), Error> {
        let entries: Vec<_> = fs::read_dir(&self.dir)
            .map_err(Error::io("list", &self.dir))?
            .collect::<Result<_, _>>()
            .map_err(Error::io("list", &self.dir))?;
        let ours = |name: &std::ffi::OsStr| name == LOCK || name == STAMP;
        let is_venv = self.dir.join("pyvenv.cfg").is_file();
        if !is_venv && entries.iter().any(|entry| !ours(&entry.file_name())) {
            return Err(Error::NotAVenv(self.dir.clone()));
        }
        for entry in entries.into_iter().filter(|entry| entry.file_name() != LOCK) {
            let path = entry.path();
            let removed =
                if path.is_dir() && !path.is_symlink() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(Error::io("remove", &path))?;
        }
        Ok(())
    }
}

/// `<repo root>/.venv`: the acceptance crate sits one level below the root.
fn default_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).join(".venv")
}

fn run(command: &mut Command) -> Result<(), Error> {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn { program: command.get_program().to_string_lossy().into_owned(), source })?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = output.stdout;
    text.extend_from_slice(&output.stderr);
    Err(Error::CommandFailed { command: shown, status: output.status, output: output_tail(&text) })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

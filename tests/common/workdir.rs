//! Work directories for programs that something else starts (launch mode), and their
//! command lines.

use super::*;

/// The targets the record tests run against: every supported manifest entry plus the
/// libpython3.11 embedder (when it builds). None (after a skip note) without a manifest.
pub fn record_targets() -> Option<Vec<Interpreter>> {
    let mut all: Vec<Interpreter> = load_manifest()?.into_iter().filter(|i| i.is_supported()).collect();
    match embed_interpreter() {
        Ok(i) => all.push(i),
        Err(e) => missing_prerequisite(&format!("cannot build the libpython3.11 embedder: {e}")),
    }
    Some(all)
}

/// A work directory inside an interpreter's root holding a copy of the fixtures, for
/// programs that something else (vizattach's launch mode) starts. Removed on drop.
pub struct WorkDir {
    pub interpreter: Interpreter,
    host_dir: PathBuf,
    target_dir: PathBuf,
}

impl WorkDir {
    pub fn new(interp: &Interpreter) -> Result<WorkDir, String> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("{}-w{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst), interp.name);
        let target_dir = Path::new(WORK_BASE).join(&unique);
        let host_dir = rooted(&interp.root, &target_dir);
        fs::create_dir_all(&host_dir).map_err(|e| format!("mkdir {}: {e}", host_dir.display()))?;
        let dir = WorkDir { interpreter: interp.clone(), host_dir, target_dir };
        copy_fixtures(&dir.host_dir)?;
        Ok(dir)
    }

    /// Host-side path of a file in the work directory.
    pub fn host_path(&self, name: &str) -> PathBuf {
        self.host_dir.join(name)
    }

    /// The same file as the interpreter sees it (its co_filename for a fixture).
    pub fn target_path(&self, name: &str) -> PathBuf {
        self.target_dir.join(name)
    }

    /// The command line that runs fixture `name` with `args` under the interpreter:
    /// `chroot ROOT EXE SCRIPT ARGS...` or `EXE SCRIPT ARGS...` (paths as the target sees them).
    pub fn command_line(&self, name: &str, args: &[String]) -> Vec<String> {
        let interp = &self.interpreter;
        let mut argv = Vec::new();
        if interp.in_chroot() {
            argv.push("chroot".to_string());
            argv.push(interp.root.display().to_string());
        }
        argv.push(interp.executable.display().to_string());
        argv.push(self.target_path(name).display().to_string());
        argv.extend(args.iter().cloned());
        argv
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.host_dir);
    }
}

/// ETXTBSY on Linux.
pub fn libc_etxtbsy() -> i32 {
    26
}

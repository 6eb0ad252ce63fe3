//! The one compile step for Skiff's eBPF programs: `ebpf/*.c` → BPF objects, with clang-19.
//!
//! [`build_all`] is used by `cargo xtask build-ebpf` (output in `target/ebpf/`) and by the agent's
//! build script (output in `OUT_DIR`), so the objects the agent embeds are built exactly like the
//! ones a developer inspects with `bpftool`. An object is rebuilt only when its source, a shared
//! header under `ebpf/include/`, or the compiler command line changed.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The compiler. Debian's clang-19 is the version verified with aya 0.14 on our machines.
pub const CLANG: &str = "clang-19";

/// One compiled program family.
#[derive(Debug, Clone)]
pub struct Object {
    /// File stem of the C source, e.g. `tc_counters`.
    pub name: String,
    /// Path of the `.o` file.
    pub path: PathBuf,
    /// Whether this call compiled it (false: it was up to date).
    pub rebuilt: bool,
}

/// Why the build failed.
#[derive(Debug)]
pub enum Error {
    /// clang-19 is not installed or not runnable.
    ClangMissing(io::Error),
    /// clang rejected a source file; `stderr` is clang's own message.
    Compile { source_file: PathBuf, stderr: String },
    /// No BPF target mapping for this architecture.
    UnsupportedArch(String),
    /// Reading sources or writing objects failed.
    Io { path: PathBuf, source: io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ClangMissing(e) => {
                write!(f, "cannot run {CLANG} ({e}); install it with `cargo xtask setup`")
            }
            Error::Compile { source_file, stderr } => {
                write!(f, "{CLANG} failed on {}:\n{}", source_file.display(), stderr.trim_end())
            }
            Error::UnsupportedArch(a) => write!(f, "no eBPF build settings for architecture {a}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ClangMissing(e) | Error::Io { source: e, .. } => Some(e),
            Error::Compile { .. } | Error::UnsupportedArch(_) => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

/// The C sources (`ebpf/*.c`), sorted by name.
pub fn sources(ebpf_dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(ebpf_dir).map_err(io_err(ebpf_dir))? {
        let path = entry.map_err(io_err(ebpf_dir))?.path();
        if path.extension() == Some(OsStr::new("c")) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Every file whose change must rebuild the objects: the sources and all shared headers.
pub fn inputs(ebpf_dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = sources(ebpf_dir)?;
    let include = ebpf_dir.join("include");
    if include.is_dir() {
        let mut stack = vec![include];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let path = entry.map_err(io_err(&dir))?.path();
                if path.is_dir() { stack.push(path) } else { out.push(path) }
            }
        }
    }
    Ok(out)
}

/// Compiler arguments for `arch` (Rust's `target_arch` spelling), without input and output.
pub fn clang_args(ebpf_dir: &Path, arch: &str) -> Result<Vec<String>, Error> {
    let (define, multiarch) = match arch {
        "x86_64" => ("x86", "x86_64-linux-gnu"),
        "aarch64" => ("arm64", "aarch64-linux-gnu"),
        other => return Err(Error::UnsupportedArch(other.to_owned())),
    };
    Ok(vec![
        "-O2".into(),
        // -g is required: BTF map definitions need the .BTF section.
        "-g".into(),
        "-target".into(),
        "bpf".into(),
        "-mcpu=v3".into(),
        "-Wall".into(),
        "-Werror".into(),
        format!("-D__TARGET_ARCH_{define}"),
        format!("-I{}", ebpf_dir.join("include").display()),
        format!("-I/usr/include/{multiarch}"),
    ])
}

/// Compiles every `ebpf/*.c` into `out_dir/<stem>.o`, skipping objects that are up to date.
pub fn build_all(ebpf_dir: &Path, out_dir: &Path, arch: &str) -> Result<Vec<Object>, Error> {
    let args = clang_args(ebpf_dir, arch)?;
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let newest_header = inputs(ebpf_dir)?
        .iter()
        .filter(|p| p.extension() != Some(OsStr::new("c")))
        .map(|p| mtime(p))
        .try_fold(SystemTime::UNIX_EPOCH, |acc, t| t.map(|t| acc.max(t)))?;

    let mut objects = Vec::new();
    for src in sources(ebpf_dir)? {
        let name = src.file_stem().and_then(OsStr::to_str).unwrap_or_default().to_owned();
        let obj = out_dir.join(format!("{name}.o"));
        let stamp = out_dir.join(format!("{name}.o.cmd"));
        let command_line = format!("{CLANG} {} -c {}", args.join(" "), src.display());
        let rebuilt = !is_fresh(&obj, &stamp, &command_line, mtime(&src)?.max(newest_header));
        if rebuilt {
            compile(&args, &src, &obj)?;
            fs::write(&stamp, &command_line).map_err(io_err(&stamp))?;
        }
        objects.push(Object { name, path: obj, rebuilt });
    }
    Ok(objects)
}

fn is_fresh(obj: &Path, stamp: &Path, command_line: &str, newest_input: SystemTime) -> bool {
    let built = mtime(obj).ok();
    let same_command = fs::read_to_string(stamp).is_ok_and(|s| s == command_line);
    same_command && built.is_some_and(|t| t >= newest_input)
}

fn compile(args: &[String], src: &Path, obj: &Path) -> Result<(), Error> {
    // Write to a temporary name so a failed or interrupted compile never leaves an object that
    // looks up to date.
    let tmp = obj.with_extension("o.tmp");
    let output = Command::new(CLANG)
        .args(args)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(&tmp)
        .output()
        .map_err(Error::ClangMissing)?;
    if !output.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::Compile {
            source_file: src.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    fs::rename(&tmp, obj).map_err(io_err(obj))
}

fn mtime(path: &Path) -> Result<SystemTime, Error> {
    fs::metadata(path).and_then(|m| m.modified()).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("skiff-bpf-build-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("include")).unwrap();
        dir
    }

    #[test]
    fn sources_are_c_files_sorted_and_inputs_include_headers() {
        let dir = tempdir("inputs");
        fs::write(dir.join("b.c"), "").unwrap();
        fs::write(dir.join("a.c"), "").unwrap();
        fs::write(dir.join("notes.md"), "").unwrap();
        fs::write(dir.join("include/common.h"), "").unwrap();
        let names = |v: Vec<PathBuf>| {
            v.iter()
                .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(sources(&dir).unwrap()), ["a.c", "b.c"]);
        let mut all = names(inputs(&dir).unwrap());
        all.sort();
        assert_eq!(all, ["a.c", "b.c", "common.h"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn freshness_needs_same_command_and_newer_object() {
        let dir = tempdir("fresh");
        let (obj, stamp) = (dir.join("x.o"), dir.join("x.o.cmd"));
        let past = SystemTime::UNIX_EPOCH;
        assert!(!is_fresh(&obj, &stamp, "cc", past), "missing object is stale");
        fs::write(&obj, "").unwrap();
        assert!(!is_fresh(&obj, &stamp, "cc", past), "missing stamp is stale");
        fs::write(&stamp, "cc").unwrap();
        assert!(is_fresh(&obj, &stamp, "cc", past));
        assert!(!is_fresh(&obj, &stamp, "cc -O3", past), "changed flags are stale");
        let future = SystemTime::now() + std::time::Duration::from_hours(1);
        assert!(!is_fresh(&obj, &stamp, "cc", future), "newer input is stale");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_arch_is_a_clear_error() {
        let err = clang_args(Path::new("ebpf"), "sparc64").unwrap_err();
        assert_eq!(err.to_string(), "no eBPF build settings for architecture sparc64");
    }
}

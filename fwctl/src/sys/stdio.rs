//! Standard output and error for the whole crate: every `print!`, `println!`,
//! `eprint!` and `eprintln!` in fwctl expands to these functions (the macros in
//! `lib.rs` shadow std's), because std's macros panic when a write fails — as
//! it does when the reader of a pipe has gone (`fwctl history | head -1`).
//!
//! fwctl keeps SIGPIPE ignored (Rust's default) rather than dying of it: a
//! command whose stdout closes must still finish what it started — `fwctl apply
//! | head -1` completes the apply and writes its audit record. Once stdout is
//! gone, further output is dropped quietly and the command's own exit code
//! stands. Any other write error (a full disk behind `> file`) is reported once
//! at exit and turns success into exit 3, so that a truncated ruleset is never
//! mistaken for a complete one.
use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDOUT_ERROR: Mutex<Option<io::Error>> = Mutex::new(None);

fn stdout_write(args: fmt::Arguments, newline: bool) {
    if cfg!(test) {
        // Unit tests: through std, whose test harness captures it.
        if newline {
            std::println!("{args}");
        } else {
            std::print!("{args}");
        }
        return;
    }
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    let r = out.write_fmt(args).and_then(|_| if newline { out.write_all(b"\n") } else { Ok(()) }).and_then(|_| out.flush());
    if let Err(e) = r {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != io::ErrorKind::BrokenPipe {
            if let Ok(mut slot) = STDOUT_ERROR.lock() {
                slot.get_or_insert(e);
            }
        }
    }
}

/// `print!`: write to stdout; after the first failed write, nothing more.
pub fn out(args: fmt::Arguments) {
    stdout_write(args, false)
}

/// `println!`.
pub fn outln(args: fmt::Arguments) {
    stdout_write(args, true)
}

fn stderr_write(args: fmt::Arguments, newline: bool) {
    if cfg!(test) {
        if newline {
            std::eprintln!("{args}");
        } else {
            std::eprint!("{args}");
        }
        return;
    }
    // Nowhere left to report a failure to write a diagnostic: drop it.
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|_| if newline { err.write_all(b"\n") } else { Ok(()) });
}

/// `eprint!`: write to stderr, ignoring failure.
pub fn err(args: fmt::Arguments) {
    stderr_write(args, false)
}

/// `eprintln!`.
pub fn errln(args: fmt::Arguments) {
    stderr_write(args, true)
}

/// Whether stdout has failed (closed pipe or otherwise): commands that only
/// list things may stop early.
pub fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

/// The exit code once the command is done: `code`, unless stdout failed for
/// another reason than a closed pipe (then reported here, and exit 3 if the
/// command had succeeded).
pub fn finish(code: u8) -> u8 {
    let failed = STDOUT_ERROR.lock().ok().and_then(|mut s| s.take());
    match failed {
        Some(e) => {
            errln(format_args!("error: cannot write the output: {e}"));
            if code == crate::cli::EXIT_OK {
                crate::cli::EXIT_SYSTEM
            } else {
                code
            }
        }
        None => code,
    }
}

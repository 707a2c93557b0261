//! What every privileged benchmark does around its run: check prerequisites
//! ("skipped: …" and exit 0 when missing), run, exit 1 on failure; numeric knobs.

pub type R<T> = Result<T, String>;

/// A numeric knob from the environment, or its default.
#[allow(dead_code)]
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

pub fn main(name: &str, prerequisites: fn() -> R<()>, run: fn() -> R<()>) {
    if let Err(reason) = prerequisites() {
        println!("skipped: {reason}");
        return;
    }
    if let Err(e) = run() {
        eprintln!("{name} bench failed: {e}");
        std::process::exit(1);
    }
}

/// The median (NaN for none).
#[allow(dead_code)]
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

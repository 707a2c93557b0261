//! fwctl: declarative firewall and VPN policy → nftables and WireGuard.
//!
//! The pipeline, one module per phase, each phase its own type:
//! `policy` (TOML files → [`policy::raw::RawPolicy`], spans kept) →
//! `model` (names resolved and validated → [`model::Policy`]) →
//! `compile` (→ [`compile::Ruleset`], a constant-lookup decision structure) →
//! `render` (→ nft text, JSON, human reports).
//! `eval` is the reference evaluator of the contract's semantics: the oracle for
//! the compiler and the engine of `explain` and policy tests. `diag` renders errors.
//! Everything above is pure. Effects are at the edges: `sys` (kernel, programs,
//! namespaces, clock, stdout), `state`/`audit` (the state directory), `vpn`
//! (key files, tunnels), `apply` driving them; `cli` wires commands to the pipeline.

// Tuples are the keys of the compiler's maps and sweeps (class, class, proto, port
// range); naming each tuple type would only rename them.
#![allow(clippy::type_complexity)]

// std's print macros panic when stdout is a closed pipe; these route every
// `print!`/`println!`/`eprint!`/`eprintln!` of the crate through
// `sys::stdio` instead (textual scope: they shadow std's in every module below).
macro_rules! print {
    ($($t:tt)*) => { $crate::sys::stdio::out(format_args!($($t)*)) };
}
macro_rules! println {
    () => { $crate::sys::stdio::outln(format_args!("")) };
    ($($t:tt)*) => { $crate::sys::stdio::outln(format_args!($($t)*)) };
}
macro_rules! eprint {
    ($($t:tt)*) => { $crate::sys::stdio::err(format_args!($($t)*)) };
}
macro_rules! eprintln {
    () => { $crate::sys::stdio::errln(format_args!("")) };
    ($($t:tt)*) => { $crate::sys::stdio::errln(format_args!($($t)*)) };
}

pub mod apply;
pub mod audit;
pub mod check;
pub mod cli;
pub mod compile;
pub mod diag;
pub mod eval;
#[doc(hidden)]
pub mod gen;
pub mod lab;
pub mod model;
pub mod plan;
pub mod policy;
pub mod render;
pub mod state;
pub mod sys;
pub mod text;
pub mod util;
pub mod vpn;

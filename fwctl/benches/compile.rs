//! Compile-time benchmark: prints figures, asserts nothing.
//!
//! `cargo bench --bench compile` — for each size (100, 1k, 10k, 100k rules) a child
//! process generates a realistic policy, then loads, resolves, compiles and renders
//! it, and reports wall times, peak memory (max RSS of that child alone), and the
//! size of what the kernel gets: rules, sets, elements.
//! `FWCTL_BENCH_SIZES=100,1000` picks sizes.

use std::process::Command;
use std::time::Instant;

fn child(n: usize) {
    let shape = fwctl::gen::Shape::for_rules(n);
    let t0 = Instant::now();
    let text = fwctl::gen::policy(&shape, 42);
    let gen = t0.elapsed();
    let today = fwctl::model::Date { year: 2026, month: 11, day: 23 };
    let t1 = Instant::now();
    let mut sm = fwctl::diag::SourceMap::default();
    let f = sm.add("gen.toml".into(), text);
    let mut raw = fwctl::policy::raw::RawPolicy::default();
    let mut diags = vec![];
    fwctl::policy::parse_file(&sm, f, &mut raw, &mut diags);
    let parse = t1.elapsed();
    let t2 = Instant::now();
    let p = fwctl::model::resolve::resolve(&raw, today, &mut diags).expect("valid generated policy");
    let resolve = t2.elapsed();
    let t3 = Instant::now();
    let c = fwctl::compile::compile(&p, fwctl::compile::Capabilities { flowtable: false }).expect("compiles");
    let compile = t3.elapsed();
    let t4 = Instant::now();
    let script = fwctl::render::nft::script(&c.ruleset, "bench");
    let render = t4.elapsed();
    let total = parse + resolve + compile + render;
    let rss = max_rss_kib();
    let s = &c.ruleset.stats;
    println!(
        "{:>7} {:>6} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.1} {:>6} {:>5} {:>9} {:>8} {:>8} {:>8.1}",
        n, shape.hosts, shape.groups, gen.as_secs_f64(), parse.as_secs_f64(), resolve.as_secs_f64(), compile.as_secs_f64(), render.as_secs_f64(),
        rss as f64 / 1024.0, s.kernel_rules, s.sets, s.elements, s.src_classes, s.dst_classes, script.len() as f64 / 1e6
    );
    let _ = total;
}

fn max_rss_kib() -> i64 {
    let mut ru: libc_rusage = unsafe { std::mem::zeroed() };
    unsafe { getrusage(0, &mut ru) };
    ru.ru_maxrss
}

#[repr(C)]
struct libc_rusage {
    ru_utime: [i64; 2],
    ru_stime: [i64; 2],
    ru_maxrss: i64,
    rest: [i64; 13],
}
extern "C" {
    fn getrusage(who: i32, usage: *mut libc_rusage) -> i32;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        child(args[pos + 1].parse().expect("size"));
        return;
    }
    let sizes: Vec<usize> = std::env::var("FWCTL_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000,10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("size"))
        .collect();
    println!("compile benchmark (wall seconds; parse+resolve+compile+render is what `fwctl compile` does)");
    println!(
        "{:>7} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>5} {:>9} {:>8} {:>8} {:>8}",
        "rules", "hosts", "groups", "generate", "parse", "resolve", "compile", "render", "peakMiB", "krules", "sets", "elements", "srccls", "dstcls", "nftMB"
    );
    let me = std::env::current_exe().expect("self");
    for n in sizes {
        let out = Command::new(&me).args(["--child", &n.to_string()]).output().expect("child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            eprintln!("size {n} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

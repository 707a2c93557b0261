//! `fwctl lab up|check|down [PATH]`: a rack of network namespaces mirroring the
//! policy, the policy loaded in its firewall namespace, checked with real packets.
use super::{OutputArgs, EXIT_FAIL, EXIT_OK, EXIT_SYSTEM};
use crate::lab::{self, plan};
use crate::sys::netns::{self, Lab};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    pub action: LabAction,
}

#[derive(Args, Debug, Clone)]
pub struct LabOpts {
    /// Policy directory or file
    #[arg(default_value = super::DEFAULT_POLICY)]
    pub path: PathBuf,
    /// Namespace name prefix (namespaces are <prefix>-fw, <prefix>-s0, ...)
    #[arg(long, default_value = lab::DEFAULT_PREFIX)]
    pub prefix: String,
}

#[derive(Subcommand, Debug)]
pub enum LabAction {
    /// Build the namespaces and load the compiled policy into <prefix>-fw
    Up(LabOpts),
    /// Probe every [[tests]] entry and a zone × host × service matrix with real packets
    Check {
        #[command(flatten)]
        opts: LabOpts,
        #[command(flatten)]
        out: OutputArgs,
        /// Seconds to wait for an answer before calling a packet dropped
        #[arg(long, default_value_t = 1.0)]
        timeout: f64,
    },
    /// Remove every namespace of the lab (also after a failed `up`). PATH is
    /// accepted like `up` and `check` take it, and not read: the lab is found by
    /// its prefix, so `down` works even when the policy no longer loads
    Down(LabOpts),
}

fn load(path: &std::path::Path) -> Result<crate::model::Policy, u8> {
    let loaded = crate::check::load(path, crate::sys::clock::today());
    if loaded.has_errors() {
        super::report(&loaded, &loaded.diags);
        return Err(EXIT_FAIL);
    }
    Ok(loaded.policy.expect("valid"))
}

pub fn exec(a: &LabArgs) -> u8 {
    if let Err(e) = netns::prerequisites() {
        eprintln!("error: `fwctl lab` cannot run here: {e}");
        return EXIT_SYSTEM;
    }
    match &a.action {
        LabAction::Up(o) => up(o),
        LabAction::Check { opts, out, timeout } => check(opts, out.json, *timeout),
        LabAction::Down(LabOpts { prefix, .. }) => match netns::cleanup_prefix(prefix) {
            Ok(gone) => {
                let _ = std::fs::remove_dir_all(state_dir(prefix));
                println!("removed {} namespace(s) with prefix {prefix}", gone.len());
                EXIT_OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_SYSTEM
            }
        },
    }
}

/// The lab's own state directory (generations and audit of `fwctl apply` inside it).
pub fn state_dir(prefix: &str) -> PathBuf {
    PathBuf::from("/run/fwctl-lab").join(prefix)
}

fn up(o: &LabOpts) -> u8 {
    let p = match load(&o.path) {
        Ok(p) => p,
        Err(c) => return c,
    };
    if !netns::list_namespaces().unwrap_or_default().iter().all(|n| !n.starts_with(&format!("{}-", o.prefix))) {
        eprintln!("error: a lab with prefix {} exists; run `fwctl lab down` first", o.prefix);
        return EXIT_FAIL;
    }
    let plan = plan::for_policy(&p);
    let mut lab = match Lab::new(&o.prefix) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SYSTEM;
        }
    };
    // On failure the lab is dropped, which removes what was built.
    if let Err(e) = lab::up(&mut lab, &plan, None) {
        eprintln!("error: lab up failed: {e}");
        return EXIT_SYSTEM;
    }
    // The policy goes in with fwctl's own apply, inside the firewall namespace.
    let state = state_dir(&o.prefix);
    let _ = std::fs::remove_dir_all(&state);
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("fwctl"));
    let fw = format!("{}-{}", o.prefix, lab::FW);
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &fw])
        .arg(&exe)
        .arg("apply")
        .arg(&o.path)
        .arg("--state-dir")
        .arg(&state)
        // The lab's tunnel interfaces are veth links: the ruleset only.
        .args(["--yes", "--no-tunnels", "--reason", "lab up"])
        .stdout(std::process::Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("error: fwctl apply failed inside {fw}; the lab is removed");
        return EXIT_SYSTEM;
    }
    lab.set_keep(true);
    println!("lab {} is up: policy applied in {fw} (state {}), {} interface(s), {} host address(es)", o.prefix, state.display(), plan.segments.len(), plan.segments.iter().map(|s| s.hosts.len() + s.hosts_b.len()).sum::<usize>());
    for s in &plan.segments {
        let addrs = |v: &[std::net::IpAddr]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ");
        println!("  {}-{} behind {} : {}", o.prefix, s.ns, s.device, addrs(&s.hosts));
        if !s.hosts_b.is_empty() {
            println!("  {}-{}b behind {} : {}", o.prefix, s.ns, s.device, addrs(&s.hosts_b));
        }
    }
    EXIT_OK
}

#[derive(serde::Serialize)]
struct Row {
    origin: String,
    flow: String,
    packet: crate::eval::Packet,
    expect: crate::eval::Verdict,
    observed: String,
    ok: bool,
}

fn check(o: &LabOpts, json: bool, timeout: f64) -> u8 {
    let p = match load(&o.path) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let lab = match Lab::attach(&o.prefix) {
        Ok(l) if !l.namespaces().is_empty() => l,
        Ok(_) => {
            eprintln!("error: no lab with prefix {}; run `fwctl lab up` first", o.prefix);
            return EXIT_FAIL;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SYSTEM;
        }
    };
    let plan = plan::for_policy(&p);
    let rows = lab::check(&lab, &plan, Duration::from_secs_f64(timeout));
    let (text, bad) = lab::table(&rows);
    if json {
        let out: Vec<Row> = rows
            .iter()
            .map(|(pp, obs)| Row {
                origin: pp.origin.clone(),
                flow: pp.flow.clone(),
                packet: pp.packet.clone(),
                expect: pp.expect,
                observed: match obs {
                    Ok(o) => format!("{o:?}").to_lowercase(),
                    Err(e) => format!("error: {e}"),
                },
                ok: obs.as_ref().is_ok_and(|o| plan::agrees(pp.expect, *o)),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).expect("serializable"));
    } else {
        print!("{text}");
        println!("{} probes, {} as expected, {} mismatched; {} packet(s) not probeable here", rows.len(), rows.len() - bad, bad, plan.skipped.len());
    }
    if bad == 0 { EXIT_OK } else { EXIT_FAIL }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// `lab down PATH`, as `up PATH` and `check PATH` are written in the docs.
    #[test]
    fn lab_down_accepts_the_policy_path_like_up_and_check() {
        for args in [&["fwctl", "lab", "down", "policies/carif-oref"][..], &["fwctl", "lab", "down", "policies/carif-oref", "--prefix", "fwx"], &["fwctl", "lab", "down"]] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let Command::Lab(l) = cli.command else { panic!("{args:?}: not lab") };
            let super::LabAction::Down(o) = l.action else { panic!("{args:?}: not down") };
            assert_eq!(o.prefix, if args.len() == 6 { "fwx" } else { crate::lab::DEFAULT_PREFIX });
        }
    }
}

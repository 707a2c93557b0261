//! `fwctl compile [PATH] [--format nft|json]`: print the ruleset `nft -f` loads as is.
use super::{PolicyArgs, EXIT_FAIL, EXIT_OK};
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Nft,
    Json,
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[arg(long, value_enum, default_value = "nft")]
    pub format: Format,
    /// Path of the nft program (for kernel feature detection)
    #[arg(long, default_value = "nft", env = "FWCTL_NFT")]
    pub nft: String,
    /// Assume this kernel feature set instead of detecting it: "none" or "all"
    #[arg(long, value_parser = ["none", "all"])]
    pub assume_caps: Option<String>,
}

pub fn exec(a: &CompileArgs) -> u8 {
    let loaded = crate::check::load(&a.policy.path, crate::sys::clock::today());
    if loaded.has_errors() {
        super::report(&loaded, &loaded.diags);
        return EXIT_FAIL;
    }
    let p = loaded.policy.as_ref().expect("no errors means a policy");
    let caps = match a.assume_caps.as_deref() {
        Some("none") => crate::compile::Capabilities { flowtable: false },
        Some(_) => crate::compile::Capabilities { flowtable: true },
        None => crate::sys::caps::detect(&a.nft),
    };
    match crate::compile::compile(p, caps) {
        Ok(c) => {
            for n in &c.ruleset.notes {
                eprintln!("note: {n}");
            }
            match a.format {
                Format::Nft => print!("{}", crate::render::nft::script(&c.ruleset, &format!("fwctl ruleset for {} — generated from {}; do not edit", p.name, a.policy.path.display()))),
                Format::Json => println!("{}", serde_json::to_string_pretty(&c.ruleset).expect("serializable")),
            }
            EXIT_OK
        }
        Err(e) => {
            super::report(&loaded, &[e.diagnostic()]);
            EXIT_FAIL
        }
    }
}

//! Options shared by the commands that read or change the applied state.
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    /// State directory (generations, audit trail)
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR, env = "FWCTL_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The nft program
    #[arg(long, default_value = "nft", env = "FWCTL_NFT")]
    pub nft: String,
}

impl StateArgs {
    pub fn kernel(&self) -> crate::sys::nft::NftCli {
        crate::sys::nft::NftCli { program: self.nft.clone() }
    }
    pub fn open(&self) -> Result<crate::state::State, u8> {
        crate::state::State::open(&self.state_dir).map_err(|e| {
            eprintln!("error: {e}");
            super::EXIT_SYSTEM
        })
    }
}

/// Seconds since the epoch (the clock is read here, at the edge).
pub fn now() -> i64 {
    use crate::sys::clock::Clock;
    crate::sys::clock::SystemClock.now_unix()
}

/// Append an audit record or explain why it could not be written.
pub fn audit(state: &crate::state::State, r: crate::audit::Record) -> Result<(), u8> {
    crate::audit::Log { dir: &state.dir }.append(r).map(|_| ()).map_err(|e| {
        eprintln!("error: cannot write the audit record: {e}");
        super::EXIT_SYSTEM
    })
}

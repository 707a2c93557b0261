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
    /// Open the state directory and take the apply lock (waiting up to `wait`).
    /// With `audited`, also refuse early when the audit trail cannot take a record,
    /// so nothing is changed that could not be recorded.
    pub fn open_locked(&self, wait: std::time::Duration, audited: bool) -> Result<(crate::state::State, crate::state::Lock), u8> {
        let state = self.open()?;
        let lock = state.lock(wait).map_err(|e| {
            eprintln!("error: {e}");
            super::EXIT_SYSTEM
        })?;
        if audited {
            if let Err(e) = (crate::audit::Log { dir: &state.dir }).check_writable() {
                eprintln!("error: {e}");
                return Err(super::EXIT_SYSTEM);
            }
        }
        Ok((state, lock))
    }

    pub fn open(&self) -> Result<crate::state::State, u8> {
        crate::state::State::open(&self.state_dir).map_err(|e| {
            eprintln!("error: {e}");
            super::EXIT_SYSTEM
        })
    }
}

/// Whether `plan`/`apply` manage the policy's WireGuard tunnels.
#[derive(Args, Debug, Clone, Copy)]
pub struct TunnelArgs {
    /// Leave WireGuard tunnels alone: plan and apply the ruleset only (`fwctl
    /// lab` uses it: its tunnel interfaces are plain veth links)
    #[arg(long)]
    pub no_tunnels: bool,
}

impl TunnelArgs {
    pub fn tunnels(&self) -> Box<dyn crate::apply::Tunnels> {
        if self.no_tunnels {
            Box::new(crate::apply::NoTunnels)
        } else {
            Box::new(crate::vpn::ops::SystemTunnels)
        }
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

/// The longest `--reason` taken (characters).
pub const REASON_MAX: usize = 500;

/// `--reason`: one line of text for the audit trail and `history` — no control
/// characters (a CR or ESC could overwrite the line it is printed on), at most
/// [`REASON_MAX`] characters.
pub fn parse_reason(s: &str) -> Result<String, String> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character U+{:04X}: a reason is one line of plain text", c as u32));
    }
    if s.chars().count() > REASON_MAX {
        return Err(format!("is longer than {REASON_MAX} characters"));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_with_control_characters_is_refused() {
        assert_eq!(parse_reason("e2e: admins move to the console server — ok").as_deref(), Ok("e2e: admins move to the console server — ok"));
        for bad in ["fix\r#5 apply ok by root", "a\x1b[2Kb", "two\nlines", "tab\there", "c1\u{9b}"] {
            assert!(parse_reason(bad).is_err(), "{bad:?}");
        }
        assert!(parse_reason(&"x".repeat(REASON_MAX + 1)).is_err());
    }
}

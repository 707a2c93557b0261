//! Planning: what changes between the applied generation and the desired policy.
//!
//! `delta`: the ruleset change (set elements, chains) a machine executes.
//! `nl`: an element delta encoded as one nf_tables netlink batch (bytes only).
//! `flows`: the flow-level change a person reads (which new connections become
//! allowed or denied), computed from the two compiled decision structures.
//! Must not: touch the kernel.
pub mod delta;
pub mod flows;
pub mod nl;

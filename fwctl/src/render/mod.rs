//! Rendering: compiled rulesets to nft text and JSON; reports for people.
//!
//! Must not: compute anything the pipeline should have decided.
pub mod nft;

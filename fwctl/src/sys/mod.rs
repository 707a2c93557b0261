//! Effects: the only layer that runs programs, touches namespaces, reads the clock.
pub mod caps;
pub mod clock;
pub mod netns;
pub mod nft;
pub mod probe;

//! Effects: the only layer that runs programs, talks netlink, touches namespaces,
//! reads the clock.
pub mod caps;
pub mod clock;
pub mod netns;
pub mod nft;
pub mod nftnl;
pub mod probe;
pub mod stdio;

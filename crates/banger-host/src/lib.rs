//! Every side effect banger has on the host, behind one narrow trait per tool.
//!
//! Each tool has a real implementation and a recording fake (compiled always, not only under
//! `cfg(test)`, so the daemon's integration tests and other crates can use them). Every external
//! command goes through [`exec::execute`], whose error records argv, exit status, stdout and
//! stderr, so a failure anywhere reads the same way.
//!
//! | tool       | trait                   | real                  | fake                  |
//! |------------|-------------------------|-----------------------|-----------------------|
//! | commands   | —                       | [`exec::execute`]     | —                     |
//! | image builds | [`build_tools::BuildTools`] | `build_tools::RealBuildTools` | `build_tools::FakeBuildTools` |
//! | disks      | [`disks::Disks`]        | `disks::RealDisks`    | `disks::FakeDisks`    |
//! | processes  | [`process::Processes`]  | `process::RealProcesses` | `process::FakeProcesses` |
//! | links      | [`links::Links`]        | `links::RealLinks`    | `links::FakeLinks`    |
//! | nftables   | [`nft::Nft`]            | `nft::RealNft`        | `nft::FakeNft`        |
//! | host FORWARD (iptables) | [`hostfw::HostForward`] | `hostfw::RealHostForward` | `hostfw::FakeHostForward` |

pub mod build_tools;
pub mod disks;
pub mod exec;
pub mod hostfw;
pub mod links;
pub mod nft;
pub mod process;

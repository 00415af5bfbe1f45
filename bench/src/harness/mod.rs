//! The side-by-side harness: systems described in a TOML file
//! ([`systems`]), a runner that alternates them through a named suite of
//! load generators ([`runner`]), the attack family it runs only when asked
//! ([`attacks`]), and the markdown and SVG report ([`report`]). The
//! `totoro-bench` binary is its command line.

pub mod attacks;
pub mod report;
pub mod runner;
pub mod systems;

//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod contend;
pub(crate) mod demo;
pub(crate) mod inspect;
pub(crate) mod plan;
pub(crate) mod synth;

//! The structured problem core: units, scale variables and blocks of costs between them
//! ([`spec`] is the contract every input format produces).

pub mod spec;

//! synbal

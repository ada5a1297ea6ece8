//! Erebus — OCI images to templates: pull and verify blobs, unpack layers safely, build ext4 images.
//!
//! Layout:
//! - [`unpack`] — applies image layers (tar, gzip or zstd) to a root filesystem directory,
//!   refusing anything that would write outside it, with OCI whiteouts and size bounds.
#![warn(missing_docs)]

pub mod unpack;

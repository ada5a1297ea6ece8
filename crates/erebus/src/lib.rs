//! Erebus — OCI images to templates: pull and verify blobs, unpack layers safely, build ext4 images.
//!
//! Layout:
//! - [`unpack`] — applies image layers (tar, gzip or zstd) to a root filesystem directory,
//!   refusing anything that would write outside it, with OCI whiteouts and size bounds.
//! - [`ext4`] — builds an ext4 filesystem image (a microVM root disk) from a root filesystem directory with
//!   `mkfs.ext4 -d`, sized to its content plus headroom.
//! - [`layout`] — writes OCI image layouts from root filesystem directories: the project's own packer, used by
//!   recipes and by tests to make images.
//! - [`recipes`] — built-in template recipes (`python-ds`) that debootstrap a root filesystem and pack it as an
//!   OCI layout.
#![warn(missing_docs)]

pub mod blobs;
pub mod build;
pub mod digest;
pub mod ext4;
pub mod layout;
pub mod recipes;
pub mod source;
pub mod unpack;

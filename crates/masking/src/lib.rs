//! Value masking for Portcullis: what a masked value becomes, and where personal data and secrets
//! hide inside text.
//!
//! This crate is pure logic: no database, no wire, no configuration. It builds
//! [`gateway_core::ValueMask`]s that protocol crates run over each value of a masked column, and it
//! is not where the decision to mask a column is made (that is the masker's, from the rules).
//!
//! In the order data meets them:
//! - a rule names a [`strategy::Strategy`] for a column; [`strategy::value_mask`] turns it, with the
//!   column's [`gateway_core::ValueType`] and [`gateway_core::ValueFormat`], into a mask that keeps
//!   every value valid for its type (or sends NULL). Keyed strategies (hash tokens,
//!   format-preserving card and national-id digits) use a [`strategy::HashKey`], loaded or created
//!   once per gateway with [`strategy::HashKey::load_or_create`];
//! - [`detect::Detectors`] find e-mail addresses, card numbers, SSNs, IBANs, phone numbers, secrets,
//!   JWTs and private keys inside text; [`detect::detector_mask`] replaces what they find in text
//!   and JSON values with placeholders such as `[email]`, and [`detect::Detectors::classify`] tells
//!   whether a whole value is one such thing (for discovering columns that hold personal data).
//!
//! What each strategy and detector does, type by type, is in `docs/masking-strategies.md`.

pub mod config;
pub mod detect;
pub mod masker;
pub mod strategy;

pub use config::{MaskingConfig, MaskingSection};
pub use masker::RuleMasker;

//! SQL analysis and the rule engine of Portcullis: it decides which identities may open which
//! targets, and judges every statement before any of it reaches a database. It is not a SQL
//! proxy and knows no wire protocol: protocol crates hand it statement text and session settings
//! through [`gateway_core::PolicyEngine`], and get back a verdict that names its rule.
//!
//! In the order data meets them:
//! - [`rules`]: the `[policy]` rule language ([`rules::PolicySection`], read from TOML with
//!   spans) checked into a [`RuleSet`]: access rules, statement rules, built-in guardrails
//!   ([`rules::Builtin`]);
//! - [`analysis`]: statement text, read with the server's own grammar where a crate allows
//!   (pg_query for PostgreSQL, sqlparser for MySQL), becomes dialect-neutral [`facts`]: class,
//!   kinds, objects read and written, functions, WHERE triviality;
//! - [`engine`]: [`RuleEngine`] implements the gateway's `PolicyEngine` on a rule set: access
//!   decisions, cached analysis and decisions, strictest-statement-wins judgement, hot
//!   replacement of the rule set, and [`RuleEngine::explain`] for the `policy explain` command.
//!
//! Everything fails closed: what cannot be parsed is denied (unless configured otherwise), and a
//! session whose settings make the server read SQL differently from the gateway is refused.

pub mod analysis;
pub mod engine;
pub mod facts;
pub mod glob;
pub mod rules;

pub use engine::{Explanation, RuleEngine};
pub use rules::{RuleError, RuleSet};

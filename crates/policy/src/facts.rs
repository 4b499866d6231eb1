//! The dialect-neutral facts that analysis produces and rules read. Nothing above this module
//! knows which parser ran.

use std::fmt;

/// The broad class of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Reads data only (SELECT without writes anywhere inside, SHOW-like catalog reads, TABLE t).
    Read,
    /// Changes data (INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY FROM, SELECT INTO, ...).
    Write,
    /// Changes schema (CREATE, ALTER, DROP, RENAME, COMMENT, ...).
    Ddl,
    /// Changes privileges or roles (GRANT, REVOKE, CREATE/ALTER/DROP ROLE or USER, SET ROLE).
    Dcl,
    /// Runs code whose effects analysis cannot see (DO, CALL, dynamic EXECUTE, PREPARE/EXECUTE of
    /// SQL-level statements whose body is judged separately).
    Procedural,
    /// Changes session state (SET, RESET, DISCARD, USE db, ...).
    Session,
    /// Transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...).
    Transaction,
    /// Everything else the server offers (EXPLAIN without ANALYZE, VACUUM, ANALYZE, LISTEN, ...).
    Utility,
}

impl Class {
    /// Lower-case name as used in rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Ddl => "ddl",
            Class::Dcl => "dcl",
            Class::Procedural => "procedural",
            Class::Session => "session",
            Class::Transaction => "transaction",
            Class::Utility => "utility",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A table, view, sequence or other relation, normalised: unquoted identifiers case-folded as the
/// dialect does, quotes removed, schema filled in when the statement or the session says it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectName {
    /// Schema (PostgreSQL) or database (MySQL); `None` when the statement leaves it to the
    /// session's search_path / default database and the session context does not fix it.
    pub schema: Option<String>,
    /// The relation name.
    pub name: String,
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The WHERE clause of an UPDATE or DELETE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// No WHERE at all.
    Absent,
    /// A WHERE that is always true (`WHERE true`, `WHERE 1=1`, `WHERE 'a'='a'`, `OR true`, ...).
    Trivial,
    /// A real condition.
    Present,
}

/// What one statement does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatementFacts {
    /// The broad class; for a statement that does several things (a SELECT with a data-modifying
    /// CTE), the most consequential one (write beats read).
    pub class: Class,
    /// Sub-kinds, lower-case, most specific first: e.g. `["delete"]`, `["drop", "drop_table"]`,
    /// `["copy", "copy_from"]`, `["explain", "explain_analyze", "delete"]` (an EXPLAIN ANALYZE
    /// runs its statement, so that statement's kinds are included), `["truncate"]`, `["grant"]`.
    pub kinds: Vec<String>,
    /// Relations read.
    pub reads: Vec<ObjectName>,
    /// Relations written (inserted, updated, deleted, truncated, created, altered, dropped).
    pub writes: Vec<ObjectName>,
    /// Functions called, normalised lower-case, schema-qualified when written so
    /// (`pg_catalog.pg_read_file` and `pg_read_file` both appear as written; rules match either).
    pub functions: Vec<String>,
    /// For UPDATE and DELETE (including ones nested in CTEs, DO blocks, rule actions and
    /// function bodies): the weakest filter among them. MERGE with an UPDATE or DELETE action
    /// reports its ON condition here; TRUNCATE reports `Absent` (every row). `None` when the
    /// statement changes no existing rows by condition (SELECT, INSERT, DDL, ...).
    pub filter: Option<Filter>,
}

/// Why a statement could not be analysed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParseFailure {
    /// Whether the server itself would reject the text, or only the gateway cannot read it.
    pub kind: FailureKind,
    /// The parser's message.
    pub message: String,
    /// Byte offset into the statement text, when the parser reports one.
    pub position: Option<usize>,
}

/// The two ways analysis fails, which the engine answers differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The database's own grammar rejects the text (PostgreSQL, read with its own parser): the
    /// server would refuse it too, so the gateway answers with the server's syntax error.
    Syntax,
    /// The gateway could not analyse the text, though the server might accept it: a grammar
    /// that is not the server's own (MySQL, read with sqlparser), a NUL byte, nesting too deep
    /// to walk.
    Unreadable,
}

/// The analysis of one statement text, which may hold several statements.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Analysis {
    /// One entry per statement, in order.
    pub statements: Vec<StatementFacts>,
    /// Set when the text could not be parsed; `statements` is then empty.
    pub failure: Option<ParseFailure>,
    /// The text's shape with constants and layout stripped (16 hex digits): texts that differ
    /// only in literal values, whitespace or comments share it, so the audit trail can group
    /// them. `None` when the text could not be parsed.
    pub fingerprint: Option<String>,
    /// Where each statement's result values come from, one entry per statement: what masking
    /// reads. `None` when the text could not be parsed. MySQL's is coarse: what each statement
    /// reads and stores, no outputs.
    #[serde(skip)]
    pub lineage: Option<std::sync::Arc<gateway_core::masking::Lineage>>,
}

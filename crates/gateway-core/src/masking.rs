//! The masking seam: given where each result column comes from, return a row masker, or none so
//! that the protocol crate forwards rows untouched.

use crate::session::SessionContext;

/// One column of a result set and where the protocol says it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultColumn {
    /// The column label the client sees.
    pub name: String,
    /// The origin table as the wire reports it (PostgreSQL: table OID; MySQL: `org_table`).
    pub table: Option<String>,
    /// The origin column (PostgreSQL: attribute number; MySQL: `org_name`).
    pub column: Option<String>,
}

/// Rewrites values of one result set, row by row. Never buffers the result set.
pub trait RowMasker: Send {
    /// Masks the values of one row in place (`None` is SQL NULL). Returns whether anything changed,
    /// so the protocol crate can forward the original bytes when nothing did.
    fn mask_row(&mut self, values: &mut [Option<Vec<u8>>]) -> bool;
}

/// Chooses a row masker per result set.
pub trait Masker: Send + Sync {
    /// Whether any masking may apply to this session at all. When `false`, protocol crates skip
    /// decoding result metadata entirely (the zero-copy path).
    fn is_active(&self, session: &SessionContext) -> bool;

    /// Runs once per result set, when its column metadata arrives. `None` means forward untouched.
    fn row_masker(
        &self,
        session: &SessionContext,
        columns: &[ResultColumn],
    ) -> Option<Box<dyn RowMasker>>;
}

/// Masks nothing: the built-in until masking rules are configured.
#[derive(Debug, Default)]
pub struct NoMasking;

impl Masker for NoMasking {
    fn is_active(&self, _: &SessionContext) -> bool {
        false
    }

    fn row_masker(&self, _: &SessionContext, _: &[ResultColumn]) -> Option<Box<dyn RowMasker>> {
        None
    }
}

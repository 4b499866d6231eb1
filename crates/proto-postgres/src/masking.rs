//! Masking on the PostgreSQL wire: reading RowDescription into typed result columns, rewriting
//! the values of masked columns in DataRow, and scrubbing the text fields of errors, notices and
//! notifications for masked sessions.
//!
//! Only sessions the masker is active for get here; every other session's rows go through as the
//! original bytes without being looked at. Within a masked session, a result set whose plan masks
//! nothing is not rewritten either.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use gateway_core::{
    ColumnOrigin, ColumnPlan, MaskPlan, MaskedColumn, ResultColumn, Session, ValueFormat, ValueType,
};

use crate::wire::Reader;

/// Reads a RowDescription body into result columns. `None` when the body is malformed (the
/// caller then masks every column: nothing unreadable is passed).
pub(crate) fn result_columns(body: &[u8]) -> Option<Vec<ResultColumn>> {
    let mut r = Reader::new(body);
    let count = usize::try_from(r.i16()?).ok()?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let name = String::from_utf8_lossy(r.cstr()?);
        let table_oid = r.i32()? as u32;
        let attnum = r.i16()?;
        let type_oid = r.i32()? as u32;
        let _typlen = r.i16()?;
        let _typmod = r.i32()?;
        let format = if r.i16()? == 1 {
            ValueFormat::Binary
        } else {
            ValueFormat::Text
        };
        let origin = if table_oid != 0 && attnum > 0 {
            ColumnOrigin::Relation { table_oid, attnum }
        } else {
            ColumnOrigin::Unknown
        };
        columns.push(ResultColumn {
            name: Arc::from(name.as_ref()),
            origin,
            value_type: value_type(type_oid),
            type_id: type_oid,
            format,
        });
    }
    Some(columns)
}

/// The masking family of a built-in PostgreSQL type OID (`pg_type.oid`, stable across versions).
/// Types created in a database (enums, domains, composite types, extension types such as citext)
/// have OIDs above 16384 and are [`ValueType::Other`]: their masked values become NULL.
pub(crate) fn value_type(oid: u32) -> ValueType {
    match oid {
        16 => ValueType::Bool,
        17 => ValueType::Bytes,
        // char, name, text, bpchar, varchar, and the OID-like types whose text is a name.
        18 | 19 | 25 | 1042 | 1043 => ValueType::Text,
        20 => ValueType::Int8,
        21 => ValueType::Int2,
        23 => ValueType::Int4,
        114 => ValueType::Json,
        700 => ValueType::Float4,
        701 => ValueType::Float8,
        1082 => ValueType::Date,
        1083 => ValueType::Time,
        1114 => ValueType::Timestamp,
        1184 => ValueType::TimestampTz,
        1700 => ValueType::Numeric,
        2950 => ValueType::Uuid,
        3802 => ValueType::Jsonb,
        // record and the anonymous row types.
        2249 => ValueType::Composite,
        // The array types of the built-in element types (pg_type.typarray), which all sit in
        // these ranges, plus json[] (199) and the jsonb, range and multirange arrays.
        143
        | 199
        | 629
        | 651
        | 719
        | 775
        | 791
        | 1000..=1041
        | 1115
        | 1182
        | 1183
        | 1185
        | 1187
        | 1231
        | 1263
        | 1270
        | 1561
        | 1563
        | 2201
        | 2207
        | 2211
        | 2287
        | 2949
        | 2951
        | 3221
        | 3643
        | 3644
        | 3645
        | 3735
        | 3770
        | 3807
        | 3905
        | 3907
        | 3909
        | 3911
        | 3913
        | 3927
        | 4073
        | 4090
        | 4192
        | 6150
        | 6151
        | 6152
        | 6153
        | 6155
        | 6157 => ValueType::Array,
        _ => ValueType::Other,
    }
}

/// Sends every value as NULL.
#[derive(Debug)]
struct Nulls;

impl gateway_core::ValueMask for Nulls {
    fn mask<'a>(&self, _: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
        None
    }
}

/// A plan for a session whose DateStyle is not ISO: masks write dates and timestamps in ISO
/// form (`1970-01-01`), which a driver reading German, SQL or Postgres style cannot parse, so
/// masked values of those types in text format go out as NULL instead.
pub(crate) fn for_date_style(plan: MaskPlan, columns: &[ResultColumn]) -> MaskPlan {
    let reason: Arc<str> = Arc::from("date in a non-ISO DateStyle: null");
    MaskPlan::new(
        plan.columns()
            .iter()
            .enumerate()
            .map(|(i, c)| match (c, columns.get(i)) {
                (ColumnPlan::Mask { .. }, Some(col))
                    if col.format == ValueFormat::Text
                        && matches!(
                            col.value_type,
                            ValueType::Date | ValueType::Timestamp | ValueType::TimestampTz
                        ) =>
                {
                    ColumnPlan::Mask {
                        mask: Arc::new(Nulls),
                        reason: Arc::clone(&reason),
                    }
                }
                (c, _) => c.clone(),
            })
            .collect(),
    )
}

/// Writes a DataRow of NULLs as wide as the DataRow `body` (none when the body is malformed).
pub(crate) fn null_row(body: &[u8], out: &mut BytesMut) {
    let n = Reader::new(body)
        .i16()
        .and_then(|c| usize::try_from(c).ok())
        .unwrap_or(0);
    out.put_u8(b'D');
    out.put_i32((4 + 2 + 4 * n) as i32);
    out.put_i16(n as i16);
    for _ in 0..n {
        out.put_i32(-1);
    }
}

/// The plan of the result set being relayed, with what it masked so far.
pub(crate) struct ActivePlan {
    plan: MaskPlan,
    names: Vec<Arc<str>>,
    counts: Vec<u64>,
}

impl ActivePlan {
    pub(crate) fn new(plan: MaskPlan, columns: &[ResultColumn]) -> Self {
        Self {
            counts: vec![0; columns.len()],
            names: columns.iter().map(|c| Arc::clone(&c.name)).collect(),
            plan,
        }
    }

    /// A plan that sends every value as NULL: for rows the gateway cannot place.
    pub(crate) fn nulls(columns: &[ResultColumn]) -> Self {
        let reason: Arc<str> = Arc::from("unplaced result: null");
        let plan = MaskPlan::new(
            columns
                .iter()
                .map(|_| ColumnPlan::Mask {
                    mask: Arc::new(Nulls),
                    reason: Arc::clone(&reason),
                })
                .collect(),
        );
        Self::new(plan, columns)
    }

    /// Whether rows of this result set need rewriting at all.
    pub(crate) fn masks(&self) -> bool {
        !self.plan.is_empty()
    }

    /// Rewrites one DataRow body into `out` as a whole frame, when a masked column changed a
    /// value. Returns `false` (and writes nothing) when the row goes out as it came. A malformed
    /// body (the upstream's bytes do not add up) is replaced by a row of NULLs of the described
    /// width: nothing unreadable is passed.
    pub(crate) fn rewrite_row(&mut self, body: &[u8], out: &mut BytesMut) -> bool {
        let mut r = Reader::new(body);
        let Some(count) = r.i16().and_then(|c| usize::try_from(c).ok()) else {
            self.null_row(out);
            return true;
        };
        // One pass, straight into `out` (no per-row allocation): the frame's length is patched
        // in at the end, and the frame is taken back if nothing changed.
        let start = out.len();
        out.reserve(body.len() + 5);
        out.put_u8(b'D');
        out.put_i32(0);
        out.put_i16(count as i16);
        let mut changed = false;
        for i in 0..count {
            let Some(len) = r.i32() else {
                out.truncate(start);
                self.null_row(out);
                return true;
            };
            let value = if len < 0 {
                None
            } else {
                match usize::try_from(len).ok().and_then(|n| r.bytes(n)) {
                    Some(v) => Some(v),
                    None => {
                        out.truncate(start);
                        self.null_row(out);
                        return true;
                    }
                }
            };
            match (self.plan.column(i), value) {
                (ColumnPlan::Mask { mask, .. }, Some(v)) => {
                    let m = mask.mask(v);
                    let same =
                        matches!(&m, Some(std::borrow::Cow::Borrowed(b)) if std::ptr::eq(*b, v));
                    if !same {
                        changed = true;
                        if let Some(c) = self.counts.get_mut(i) {
                            *c += 1;
                        }
                    }
                    put_value(out, m.as_deref());
                }
                (_, v) => put_value(out, v),
            }
        }
        if !changed {
            out.truncate(start);
            return false;
        }
        let len = (out.len() - start - 1) as i32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        true
    }

    /// A DataRow of NULLs, one per described column.
    fn null_row(&mut self, out: &mut BytesMut) {
        let n = self.names.len();
        out.put_u8(b'D');
        out.put_i32((4 + 2 + 4 * n) as i32);
        out.put_i16(n as i16);
        for _ in 0..n {
            out.put_i32(-1);
        }
        for c in &mut self.counts {
            *c += 1;
        }
    }

    /// What was masked, for the audit trail.
    pub(crate) fn report(&self) -> Vec<MaskedColumn> {
        self.plan.report(&self.names, &self.counts)
    }
}

/// An ErrorResponse or NoticeResponse of a masked session, with its text fields scrubbed: the
/// message and hint go through the masker; the detail, context and internal query are left out,
/// because PostgreSQL prints row values there unquoted (`Failing row contains (...)`, `JSON data,
/// line 1: ...`). Field codes: protocol documentation, "Error and Notice Message Fields".
///
/// `reads_masked`: the statement the message answers reads masked columns (or what cannot be
/// traced), so the message and hint are replaced whole: the database prints values unquoted in
/// messages too (`date out of range: 18273645-01-01`), and the text is no place to tell them
/// from the wording. The SQLSTATE, the position and the names of schema, table, column, type
/// and constraint stay.
pub(crate) fn scrub_fields(
    session: &Session,
    ty: u8,
    body: &[u8],
    reads_masked: bool,
) -> Option<BytesMut> {
    let fields = crate::wire::error_fields(body);
    // A message raised by user code (PL/pgSQL RAISE, whose context line says so) is whatever
    // text the function built, values included and unquoted: none of it is passed on.
    let raised = fields
        .iter()
        .any(|(code, value)| *code == b'W' && value.contains(" RAISE"));
    let sqlstate = fields
        .iter()
        .find(|(code, _)| *code == b'C')
        .map_or("", |(_, v)| v.as_str());
    let hidden = format!(
        "the database's message (SQLSTATE {sqlstate}) is hidden because the statement reads masked columns"
    );
    let mut changed = false;
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(ty);
    out.put_i32(0);
    for (code, value) in &fields {
        match code {
            b'D' | b'W' | b'q' | b'p' => {
                changed = true;
                continue;
            }
            b'M' | b'H' if raised => {
                changed = true;
                if *code == b'H' {
                    continue;
                }
                out.put_u8(*code);
                out.extend_from_slice(RAISED.as_bytes());
            }
            b'M' | b'H' if reads_masked => {
                changed = true;
                if *code == b'H' {
                    continue;
                }
                out.put_u8(*code);
                out.extend_from_slice(hidden.as_bytes());
            }
            b'M' | b'H' => {
                let scrubbed = session.scrub(value);
                changed |= scrubbed != value.as_str();
                out.put_u8(*code);
                out.extend_from_slice(scrubbed.as_bytes());
            }
            _ => {
                out.put_u8(*code);
                out.extend_from_slice(value.as_bytes());
            }
        }
        out.put_u8(0);
    }
    out.put_u8(0);
    if !changed {
        return None;
    }
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// One DataRow value: its length, then its bytes (-1 and nothing for NULL).
fn put_value(out: &mut BytesMut, value: Option<&[u8]>) {
    match value {
        None => out.put_i32(-1),
        Some(b) => {
            out.put_i32(b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

/// What a masked session reads instead of a message raised by a function.
const RAISED: &str =
    "a function raised this message; its text is hidden because masking applies to this session";

/// A NotificationResponse of a masked session, with its payload scrubbed. `None`: unchanged.
pub(crate) fn scrub_notification(session: &Session, body: &[u8]) -> Option<BytesMut> {
    let mut r = Reader::new(body);
    let pid = r.i32()?;
    let channel = r.cstr()?;
    let payload = r.cstr()?;
    let text = String::from_utf8_lossy(payload);
    let scrubbed = session.scrub(&text);
    if scrubbed == text {
        return None;
    }
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(b'A');
    out.put_i32(0);
    out.put_i32(pid);
    out.extend_from_slice(channel);
    out.put_u8(0);
    out.extend_from_slice(scrubbed.as_bytes());
    out.put_u8(0);
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Some(out)
}

/// Whether a command tag says the schema changed (CREATE, ALTER, DROP, ...), so that cached
/// catalog entries may be stale.
pub(crate) fn is_schema_change(tag: &[u8]) -> bool {
    [
        &b"CREATE "[..],
        b"ALTER ",
        b"DROP ",
        b"COMMENT",
        b"GRANT",
        b"REVOKE",
        b"IMPORT ",
    ]
    .iter()
    .any(|p| tag.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_description(cols: &[(&str, u32, i16, u32, i16)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for (name, table, attnum, ty, format) in cols {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&table.to_be_bytes());
            b.extend_from_slice(&attnum.to_be_bytes());
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.extend_from_slice(&format.to_be_bytes());
        }
        b
    }

    #[test]
    fn row_descriptions_become_typed_columns_and_truncated_ones_are_refused() {
        let body = row_description(&[("id", 16400, 1, 23, 1), ("e", 0, 0, 25, 0)]);
        let cols = result_columns(&body).unwrap();
        assert_eq!(
            cols[0].origin,
            ColumnOrigin::Relation {
                table_oid: 16400,
                attnum: 1
            }
        );
        assert_eq!(cols[0].value_type, ValueType::Int4);
        assert_eq!(cols[0].format, ValueFormat::Binary);
        assert_eq!(cols[1].origin, ColumnOrigin::Unknown);
        assert_eq!(cols[1].value_type, ValueType::Text);
        for cut in 0..body.len() {
            assert!(result_columns(&body[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[derive(Debug)]
    struct Stars;
    impl gateway_core::ValueMask for Stars {
        fn mask<'a>(&self, _: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
            Some(std::borrow::Cow::Borrowed(b"***"))
        }
    }

    fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    #[test]
    fn masked_columns_are_rewritten_and_counted_and_malformed_rows_become_nulls() {
        let cols = result_columns(&row_description(&[
            ("id", 1, 1, 23, 0),
            ("email", 1, 2, 25, 0),
        ]))
        .unwrap();
        let plan = MaskPlan::new(vec![
            ColumnPlan::Pass,
            ColumnPlan::Mask {
                mask: Arc::new(Stars),
                reason: "r".into(),
            },
        ]);
        let mut active = ActivePlan::new(plan, &cols);
        let mut out = BytesMut::new();
        let body = data_row(&[Some(b"7"), Some(b"alice@example.com")]);
        assert!(active.rewrite_row(&body, &mut out));
        let expected = data_row(&[Some(b"7"), Some(b"***")]);
        assert_eq!(&out[5..], &expected[..]);
        assert_eq!(out[0], b'D');
        assert_eq!(
            i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            expected.len() + 4
        );
        // NULL stays NULL, and a NULL is not counted as masked.
        out.clear();
        assert!(!active.rewrite_row(&data_row(&[Some(b"8"), None]), &mut out));
        assert!(out.is_empty());
        assert_eq!(active.report()[0].values, 1);
        // Truncated rows never pass: every column NULL.
        for cut in 0..body.len() {
            out.clear();
            assert!(active.rewrite_row(&body[..cut], &mut out), "cut at {cut}");
            assert!(
                !out.windows(5).any(|w| w == b"alice"),
                "cut at {cut} leaked"
            );
        }
    }

    #[test]
    fn masked_dates_in_text_become_null_outside_iso_date_styles() {
        let cols = result_columns(&row_description(&[
            ("born", 1, 1, 1082, 0),
            ("born_bin", 1, 1, 1082, 1),
            ("name", 1, 2, 25, 0),
        ]))
        .unwrap();
        let stars = || ColumnPlan::Mask {
            mask: Arc::new(Stars),
            reason: "r".into(),
        };
        let plan = for_date_style(MaskPlan::new(vec![stars(), stars(), stars()]), &cols);
        let mut active = ActivePlan::new(plan, &cols);
        let mut out = BytesMut::new();
        let body = data_row(&[Some(b"1987-06-14"), Some(b"\xff\xff\xee\x18"), Some(b"x")]);
        assert!(active.rewrite_row(&body, &mut out));
        // Text date: NULL; binary date and text keep their masks.
        let expected = data_row(&[None, Some(b"***"), Some(b"***")]);
        assert_eq!(&out[5..], &expected[..]);
    }

    #[test]
    fn schema_changing_tags_are_recognised() {
        assert!(is_schema_change(b"ALTER TABLE"));
        assert!(is_schema_change(b"DROP VIEW"));
        assert!(is_schema_change(b"CREATE TABLE"));
        assert!(!is_schema_change(b"SELECT 1"));
        assert!(!is_schema_change(b"INSERT 0 1"));
    }
}
